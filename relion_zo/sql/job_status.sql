-- relion_zo job states (docs/status.md): the only definition of the rules. relion_zo/status.py
-- runs this text as it is; SynchWeb or a person at a MariaDB prompt can run it too.
-- One row per relion ProcessingJob, state from its newest AutoProcProgram.
-- Bind parameters (NULL filters match everything):
--   :stale_seconds        heartbeat age after which a running job is lost
--   :processing_job_id    one job
--   :data_collection_id   one data collection
--   :session_id           one visit (BLSession.sessionId)
-- At a MariaDB prompt, put a value (or NULL) in place of each bind parameter.
-- Its cost grows with the jobs it returns, never with the rest of the tables: a visit is read
-- through production's indexes DataCollection(SESSIONID), ProcessingJob(dataCollectionId) and
-- AutoProcProgram(processingJobId), a few index lookups a job (docs/performance.md).
SELECT
    pj.processingJobId AS processing_job_id,
    pj.dataCollectionId AS data_collection_id,
    dc.SESSIONID AS session_id,
    app.autoProcProgramId AS auto_proc_program_id,
    app.processingStartTime AS start_time,
    app.processingEndTime AS heartbeat,
    app.processingStatus AS processing_status,
    app.processingMessage AS message,
    CASE
        WHEN app.autoProcProgramId IS NULL THEN 'submitted'
        -- Final statuses told apart by how their message starts: one WHEN per prefix, before
        -- the plain status rules below. 'Stopped by user' is relion_zo.status.STOPPED_PREFIX.
        WHEN app.processingStatus = 1
             AND app.processingMessage LIKE 'Stopped by user%' THEN 'stopped'
        WHEN app.processingStatus = 1 THEN 'success'
        WHEN app.processingStatus IS NOT NULL THEN 'failure'
        WHEN app.processingStartTime IS NULL THEN 'queued'
        WHEN TIMESTAMPDIFF(SECOND,
                           COALESCE(app.processingEndTime, app.processingStartTime),
                           NOW()) > :stale_seconds THEN 'lost'
        ELSE 'running'
    END AS state
FROM ProcessingJob pj
JOIN DataCollection dc ON dc.dataCollectionId = pj.dataCollectionId
-- The newest program: the job's program that no newer program of the job follows (a job
-- without any keeps NULLs: submitted). One index probe a program, where a MAX() subquery per
-- job was evaluated about three times a job.
LEFT JOIN AutoProcProgram app
    ON app.processingJobId = pj.processingJobId
LEFT JOIN AutoProcProgram newer
    ON newer.processingJobId = pj.processingJobId
   AND newer.autoProcProgramId > app.autoProcProgramId
WHERE newer.autoProcProgramId IS NULL
  AND pj.recipe = 'relion'
  AND (:processing_job_id IS NULL OR pj.processingJobId = :processing_job_id)
  AND (:data_collection_id IS NULL OR pj.dataCollectionId = :data_collection_id)
  AND (:session_id IS NULL OR dc.SESSIONID = :session_id)
ORDER BY pj.processingJobId;
