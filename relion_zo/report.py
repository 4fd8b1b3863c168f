"""``relion-zo report N``: one processing job as a self-contained HTML page a facility manager
can send to a user. Everything comes from ISPyB (the job, its state, its parameters and the
result rows ``relion_zo.result_rows`` wrote) and the project (the 2D class averages, the
micrographs' times), so it can be made again at any time. Plots are matplotlib's, images PNG,
all embedded: the page needs no other file and no network.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import io
import statistics
from dataclasses import dataclass, field
from pathlib import Path

import mrcfile
import numpy as np
from ispyb.sqlalchemy import (
    CTF,
    AutoProcProgram,
    AutoProcProgramAttachment,
    MotionCorrection,
    Movie,
    ParticleClassification,
    ParticleClassificationGroup,
    ParticlePicker,
    ProcessingJobParameter,
)
from sqlalchemy import select
from sqlalchemy.orm import Session

from relion_zo import images, status
from relion_zo.paths import is_within

REPORT_NAME = "relion_zo_report.html"


@dataclass
class ReportData:
    job: status.JobStatus
    parameters: list[tuple[str, str]]
    project: Path | None
    movies: list[dict] = field(default_factory=list)  # one per motion-corrected movie
    pickers: list[dict] = field(default_factory=list)
    groups: list[dict] = field(default_factory=list)  # with their "classes"


def load(db: Session, processing_job_id: int, stale_seconds: float,
         data_roots: list[Path]) -> ReportData | None:
    """The job's rows; None for a job that does not exist."""
    rows = status.query_states(db, stale_seconds=stale_seconds,
                               processing_job_id=processing_job_id)
    if not rows:
        return None
    programs = select(AutoProcProgram.autoProcProgramId).where(
        AutoProcProgram.processingJobId == processing_job_id).scalar_subquery()
    parameters = [(k, v) for k, v in db.execute(
        select(ProcessingJobParameter.parameterKey, ProcessingJobParameter.parameterValue)
        .where(ProcessingJobParameter.processingJobId == processing_job_id)
        .order_by(ProcessingJobParameter.processingJobParameterId)).all()
        if not str(k).startswith("relion_zo_")]
    folder = db.execute(
        select(AutoProcProgramAttachment.filePath)
        .where(AutoProcProgramAttachment.autoProcProgramId.in_(programs),
               AutoProcProgramAttachment.fileType == "Input")
        .order_by(AutoProcProgramAttachment.autoProcProgramAttachmentId.desc())).scalar()
    project = Path(folder) if folder else None
    if project is not None and not any(is_within(project.resolve(), Path(root).resolve())
                                       for root in data_roots):
        project = None  # the report reads files only inside the site's data roots
    data = ReportData(rows[0], parameters, project)
    for row in db.execute(
            select(Movie.movieNumber, Movie.createdTimeStamp, MotionCorrection.totalMotion,
                   MotionCorrection.micrographFullPath, CTF.estimatedDefocus,
                   CTF.estimatedResolution, CTF.astigmatism)
            .join(Movie, Movie.movieId == MotionCorrection.movieId)
            .join(CTF, CTF.motionCorrectionId == MotionCorrection.motionCorrectionId,
                  isouter=True)
            .where(MotionCorrection.autoProcProgramId.in_(programs))
            .order_by(Movie.createdTimeStamp, Movie.movieNumber)).all():
        data.movies.append(row._asdict())
    for row in db.execute(
            select(ParticlePicker.particlePickingTemplate, ParticlePicker.numberOfParticles,
                   MotionCorrection.imageNumber)
            .join(MotionCorrection, MotionCorrection.motionCorrectionId
                  == ParticlePicker.firstMotionCorrectionId)
            .where(ParticlePicker.programId.in_(programs))).all():
        data.pickers.append(row._asdict())
    groups = db.execute(select(ParticleClassificationGroup).where(
        ParticleClassificationGroup.programId.in_(programs)).order_by(
        ParticleClassificationGroup.particleClassificationGroupId)).scalars().all()
    for group in groups:
        classes = db.execute(select(ParticleClassification).where(
            ParticleClassification.particleClassificationGroupId
            == group.particleClassificationGroupId).order_by(
            ParticleClassification.classDistribution.desc())).scalars().all()
        first = next((c.classImageFullPath for c in classes if c.classImageFullPath), "")
        job = "/".join(Path(first.partition("@")[2] or first).parent.parts[-2:])
        data.groups.append({
            "type": group.type, "batch": group.batchNumber, "job": job,
            "particles": group.numberOfParticlesPerBatch, "symmetry": group.symmetry,
            "pixel_size": group.binnedPixelSize,
            "classes": [{"number": c.classNumber, "image": c.classImageFullPath,
                         "distribution": c.classDistribution,
                         "particles": c.particlesPerClass,
                         "resolution": c.estimatedResolution} for c in classes]})
    return data


# ------------------------------------------------------------------------------ rendering
def _time_axis(ax, times: list[dt.datetime]) -> None:
    """Times on the x axis, labelled concisely, at least a minute wide."""
    from matplotlib import dates

    locator = dates.AutoDateLocator()
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(dates.ConciseDateFormatter(locator))
    if times:
        first, last = min(times), max(times)
        if (last - first).total_seconds() < 60:
            middle = first + (last - first) / 2
            ax.set_xlim(middle - dt.timedelta(seconds=30), middle + dt.timedelta(seconds=30))


def _figure(draw, width: float = 5.0, height: float = 2.9) -> str:
    """A matplotlib figure as an embedded PNG ``<img>``."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots(figsize=(width, height), dpi=110)
    try:
        draw(ax)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png")
    finally:
        plt.close(fig)
    return _img(buffer.getvalue(), "plot")


def _img(png: bytes, css: str) -> str:
    return (f'<img class="{css}" alt="" src="data:image/png;base64,'
            f'{base64.b64encode(png).decode()}">')


def _plots(data: ReportData) -> list[tuple[str, str]]:
    movies = data.movies
    if not movies:
        return []
    times = [m["createdTimeStamp"] for m in movies]
    motion = [m["totalMotion"] for m in movies]
    defocus = [m["estimatedDefocus"] / 1e4 if m["estimatedDefocus"] is not None else np.nan
               for m in movies]
    resolution = [m["estimatedResolution"] for m in movies
                  if m["estimatedResolution"] is not None]
    plots = [
        ("Motion over time", _figure(lambda ax: (
            ax.plot(times, motion, ".-", color="#1f77b4"), _time_axis(ax, times),
            ax.set_ylabel("total motion (pixels)"), ax.set_xlabel("movie acquired")))),
        ("Defocus over time", _figure(lambda ax: (
            ax.plot(times, defocus, ".", color="#2ca02c"), _time_axis(ax, times),
            ax.set_ylabel("defocus (µm)"), ax.set_xlabel("movie acquired")))),
    ]
    if resolution:
        plots.append(("CTF resolution", _figure(lambda ax: (
            ax.hist(resolution, bins=min(30, max(5, len(resolution) // 3)), color="#9467bd"),
            ax.set_xlabel("estimated CTF resolution (Å)"), ax.set_ylabel("movies")))))
    pickers = sorted({p["particlePickingTemplate"] for p in data.pickers})
    if pickers:
        def particles(ax):
            for picker in pickers:
                points = sorted((p["imageNumber"], p["numberOfParticles"] or 0)
                                for p in data.pickers if p["particlePickingTemplate"] == picker)
                ax.plot([x for x, _ in points], [y for _, y in points], ".-",
                        label=picker[:40])
            ax.set_xlabel("movie number")
            ax.set_ylabel("particles picked")
            ax.xaxis.get_major_locator().set_params(integer=True)
            ax.legend(fontsize=7)
        plots.append(("Particles per micrograph", _figure(particles)))
    processed = []
    for m in movies:
        try:
            processed.append(dt.datetime.fromtimestamp(
                Path(m["micrographFullPath"]).stat().st_mtime))
        except (OSError, TypeError):
            continue
    if processed:
        def throughput(ax):
            acquired = sorted(times)
            done = sorted(processed)
            ax.step(acquired, range(1, len(acquired) + 1), where="post", label="acquired")
            ax.step(done, range(1, len(done) + 1), where="post", label="motion-corrected")
            _time_axis(ax, acquired + done)
            ax.set_ylabel("movies")
            ax.set_xlabel("time")
            ax.legend(fontsize=7)
        plots.append(("Throughput and backlog", _figure(throughput)))
    return plots


def _class_tile(image: str | None) -> bytes | None:
    """A 2D class average as PNG (its picture, or image ``n`` of ``n@stack.mrcs``), or None
    when it cannot be read."""
    if image and image.endswith(".png"):
        try:
            return Path(image).read_bytes()
        except OSError:
            return None
    if not image or "@" not in image:
        return None
    index, stack = image.split("@", 1)
    try:
        with mrcfile.mmap(stack, permissive=True) as mrc:
            data = np.asarray(mrc.data[int(index) - 1], dtype=np.float32)
    except (OSError, ValueError, IndexError):
        return None
    tile = images.to_uint8(data, (1.0, 99.0))
    factor = max(1, 96 // max(tile.shape))
    return images.png_bytes(np.kron(tile, np.ones((factor, factor), np.uint8)))


def _number(value, digits: int = 1) -> str:
    return "–" if value is None else f"{value:,.{digits}f}"


def render(data: ReportData, now: dt.datetime | None = None) -> str:
    now = now or dt.datetime.now()
    job = data.job
    movies = data.movies
    motion = [m["totalMotion"] for m in movies if m["totalMotion"] is not None]
    defocus = [m["estimatedDefocus"] for m in movies if m["estimatedDefocus"] is not None]
    resolution = [m["estimatedResolution"] for m in movies
                  if m["estimatedResolution"] is not None]
    particles: dict[str, int] = {}
    for p in data.pickers:
        particles[p["particlePickingTemplate"]] = (particles.get(p["particlePickingTemplate"], 0)
                                                   + (p["numberOfParticles"] or 0))
    e = html.escape
    facts = [
        ("State", f'<span class="state {e(job.state)}">{e(job.state)}</span> '
                  f'{e(job.message or "")}'),
        ("Started", e(str(job.start_time or "–"))),
        ("Last heartbeat", e(str(job.heartbeat or "–"))),
        ("Movies processed", f"{len(movies):,}"),
        ("Motion", f"mean {_number(statistics.fmean(motion) if motion else None, 2)} pixels"),
        ("Defocus", (f"{_number(min(defocus) / 1e4, 2)} to {_number(max(defocus) / 1e4, 2)} µm"
                     if defocus else "–")),
        ("CTF resolution",
         f"median {_number(statistics.median(resolution) if resolution else None)} Å"),
        ("Particles", ", ".join(f"{n:,} ({e(t)})" for t, n in particles.items()) or "–"),
    ]
    parts = [f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>RELION processing job {job.processing_job_id}</title>
<style>
body {{ font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 2em auto;
       max-width: 1100px; color: #222; padding: 0 1em; }}
h1 {{ font-size: 1.6em; margin-bottom: 0.2em; }} h2 {{ border-bottom: 1px solid #ddd;
  padding-bottom: 0.2em; margin-top: 1.6em; }}
.sub {{ color: #666; margin-top: 0; }}
table {{ border-collapse: collapse; }} td, th {{ padding: 4px 10px; text-align: left;
  border-bottom: 1px solid #eee; vertical-align: top; }}
th {{ color: #555; font-weight: 600; }}
.state {{ padding: 1px 8px; border-radius: 9px; color: white; background: #888; }}
.state.success {{ background: #2e7d32; }} .state.running {{ background: #1565c0; }}
.state.failure, .state.lost {{ background: #c62828; }} .state.stopped {{ background: #6d4c41; }}
.plots {{ display: flex; flex-wrap: wrap; gap: 12px; }}
.plots figure {{ margin: 0; flex: 0 1 calc(50% - 12px); min-width: 320px; }}
img.plot {{ width: 100%; }} figcaption {{ color: #555; font-size: 0.9em; }}
.gallery {{ display: flex; flex-wrap: wrap; gap: 8px; }}
.gallery figure {{ margin: 0; text-align: center; font-size: 0.8em; color: #444; }}
img.tile {{ width: 96px; height: 96px; image-rendering: pixelated; border: 1px solid #ccc; }}
.params {{ columns: 3; font-size: 0.85em; }}
</style></head><body>
<h1>RELION processing job {job.processing_job_id}</h1>
<p class="sub">Data collection {job.data_collection_id or "–"} · report made
{e(now.strftime("%Y-%m-%d %H:%M"))} by relion_zo from ISPyB and the project
{e(str(data.project or "(not readable here)"))}</p>
<h2>Summary</h2><table>"""]
    parts += [f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in facts]
    parts.append("</table>")
    plots = _plots(data)
    if plots:
        parts.append('<h2>Pre-processing</h2><div class="plots">')
        parts += [f"<figure>{img}<figcaption>{e(title)}</figcaption></figure>"
                  for title, img in plots]
        parts.append("</div>")
    for group in data.groups:
        if group["type"] != "2D":
            continue
        tiles = []
        for c in group["classes"]:
            png = _class_tile(c["image"])
            if png is None:
                continue
            tiles.append(f"<figure>{_img(png, 'tile')}<figcaption>class {c['number']}<br>"
                         f"{_number(100 * (c['distribution'] or 0))} % · "
                         f"{_number(c['resolution'])} Å</figcaption></figure>")
        if tiles:
            parts.append(f"<h2>2D classes: {e(group['job'])}, batch {group['batch']} "
                         f"({group['particles']:,} particles)</h2>"
                         f'<div class="gallery">{"".join(tiles)}</div>')
    three_d = [g for g in data.groups if g["type"] == "3D"]
    if three_d:
        parts.append("<h2>3D classes</h2><table><tr><th>job</th><th>batch</th><th>class</th>"
                     "<th>particles</th><th>resolution (Å)</th></tr>")
        for g in three_d:
            for c in g["classes"]:
                parts.append(f"<tr><td>{e(g['job'])}</td><td>{g['batch']}</td>"
                             f"<td>{c['number']}</td>"
                             f"<td>{c['particles'] or 0:,}</td>"
                             f"<td>{_number(c['resolution'])}</td></tr>")
        parts.append("</table>")
    parts.append('<h2>Parameters</h2><div class="params">')
    parts += [f"<div><b>{e(k)}</b> {e(v)}</div>" for k, v in data.parameters]
    parts.append("</div></body></html>\n")
    return "\n".join(parts)
