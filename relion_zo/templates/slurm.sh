#!/bin/bash
# relion_zo's Slurm submission template for RELION 3.1 (docs/slurm.md). A site names it, or its
# own copy, as queue.submission_template. For each job RELION replaces the XXX...XXX fields
# (MPI processes, threads, the job's folder, the queue a job chose among queue.names) and runs
# "sbatch run_submit.script" in the project folder. Adapt the lines marked SITE.
#SBATCH --job-name=relion
#SBATCH --partition=XXXqueueXXX
#SBATCH --ntasks=XXXmpinodesXXX
#SBATCH --cpus-per-task=XXXthreadsXXX
# SITE: memory grows with the job's size: per core, times XXXcoresXXX cores in all
#SBATCH --mem-per-cpu=1G
# SITE: the longest a RELION job may run here
#SBATCH --time=1-00:00:00
# SITE: a GPU partition's jobs ask for their GPUs, e.g.
##SBATCH --gres=gpu:4
#SBATCH --output=XXXoutfileXXX
#SBATCH --error=XXXerrfileXXX
#SBATCH --open-mode=append

# RELION's MPI programs (and, with one process, its others) start through mpirun, which
# takes the processes Slurm gave the job.
mpirun -n XXXmpinodesXXX XXXcommandXXX
