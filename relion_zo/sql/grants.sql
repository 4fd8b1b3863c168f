-- What relion_zo needs from ISPyB, per side. docs/ispyb.md explains each line.
--
-- Run it in the ISPyB database (`USE ispyb;` first): the table names carry no database name.
-- It makes two roles. Give each user one of them:
--   CREATE USER 'pato'@'%' IDENTIFIED BY '...';
--   GRANT relion_zo_web TO 'pato'@'%';
--   SET DEFAULT ROLE relion_zo_web FOR 'pato'@'%';
-- A facility whose users already hold ISPyB's own roles (ispyb-database's grants/) needs only
-- the lines marked EXTRA, granted to the user of that side: everything else below is a subset
-- of ISPyB's `ispyb_web` (web side) or `ispyb_processing` (processing side) role.
-- `relion-zo start`, `stop`, `restart` and `reprocess` are the web side; `run`, `resume`,
-- `worker`, `dispatcher`, `reap` and `status` the processing side.

CREATE ROLE IF NOT EXISTS relion_zo_web;
CREATE ROLE IF NOT EXISTS relion_zo_processing;

-- ---------------------------------------------------------------- web side (within ispyb_web)
-- ispyb_web holds SELECT on every table; relion_zo's web side reads these.
GRANT SELECT ON AdminVar TO relion_zo_web;
GRANT SELECT ON Proposal TO relion_zo_web;
GRANT SELECT ON BLSession TO relion_zo_web;
GRANT SELECT ON DataCollectionGroup TO relion_zo_web;
GRANT SELECT ON DataCollection TO relion_zo_web;
GRANT SELECT ON ProcessingJob TO relion_zo_web;
GRANT SELECT ON ProcessingJobParameter TO relion_zo_web;
GRANT SELECT ON AutoProcProgram TO relion_zo_web;
-- Start: the data collection when it is missing, then the job, its parameters and its sweep.
-- A stop request is one more ProcessingJobParameter row (relion_zo_stop_request).
GRANT INSERT ON DataCollectionGroup TO relion_zo_web;
GRANT INSERT, UPDATE ON DataCollection TO relion_zo_web;
GRANT INSERT ON ProcessingJob TO relion_zo_web;
GRANT INSERT ON ProcessingJobParameter TO relion_zo_web;
GRANT SELECT, INSERT ON ProcessingJobImageSweep TO relion_zo_web;

-- ---------------------------------------------------------------- processing side
-- Within ispyb_processing:
GRANT SELECT ON AdminVar TO relion_zo_processing;
GRANT SELECT ON ProcessingJob TO relion_zo_processing;
GRANT SELECT, INSERT ON ProcessingJobParameter TO relion_zo_processing;
GRANT SELECT, INSERT, UPDATE ON AutoProcProgram TO relion_zo_processing;
GRANT SELECT, INSERT ON AutoProcProgramAttachment TO relion_zo_processing;
-- The job's results, as the web UIs read them (relion_zo.result_rows): a row is looked up by
-- its natural key before it is added, and a batch RELION classifies again is updated.
GRANT SELECT, INSERT ON Movie TO relion_zo_processing;
GRANT SELECT, INSERT ON MotionCorrection TO relion_zo_processing;
GRANT SELECT, INSERT ON CTF TO relion_zo_processing;
GRANT SELECT, INSERT ON ParticlePicker TO relion_zo_processing;
GRANT SELECT, INSERT, UPDATE ON ParticleClassificationGroup TO relion_zo_processing;
GRANT SELECT, INSERT, UPDATE ON ParticleClassification TO relion_zo_processing;
GRANT SELECT, INSERT ON CryoemInitialModel TO relion_zo_processing;
GRANT SELECT, INSERT ON ParticleClassification_has_CryoemInitialModel TO relion_zo_processing;
-- A failure's reason as an AutoProcProgramMessage row: ISPyB lets this role write that table
-- only through its procedure.
GRANT EXECUTE ON PROCEDURE upsert_processing_program_message TO relion_zo_processing;

-- EXTRA (not in ispyb_processing): where a job's movies are and which visit it belongs to.
-- Only the columns relion_zo reads; no person, title or contact data.
GRANT SELECT (dataCollectionId, SESSIONID, imageDirectory, fileTemplate)
    ON DataCollection TO relion_zo_processing;
GRANT SELECT (sessionId, proposalId, visit_number, beamLineName, startDate)
    ON BLSession TO relion_zo_processing;
GRANT SELECT (proposalId, proposalCode, proposalNumber)
    ON Proposal TO relion_zo_processing;
