-- Optional indexes for relion_zo: ISPyB (schemas/ispyb/tables.sql, 5.x) does not have them,
-- relion_zo works without them, and relion_zo never creates them. A facility's DBA may apply
-- this file when the case below is theirs (docs/performance.md has the figures):
--
--   mariadb ispyb < optional_indexes.sql
--
-- Start finds a visit's data collection by folder and file template (relion_zo.jobs,
-- _find_data_collection: SESSIONID, imageDirectory and fileTemplate). With ISPyB's own indexes
-- MariaDB reads every data collection of that folder (DataCollection_FKIndexImageDirectory) or
-- of the visit (DataCollection_FKIndex00), whichever is fewer. That is one or a few rows when
-- each data collection has a folder of its own, as a session's grids usually do. When many data
-- collections share one folder, each with a template of its own, a Start of a new one grows with
-- them (on the local stack: 50 ms with 8,000 in the folder, 150 ms with 80,000, against 11-14 ms
-- for a folder of its own); this index makes the lookup one index probe (13-14 ms a Start with
-- 8,000 or 80,000 in the folder).
--
-- It costs an index entry of up to 514 bytes per DataCollection row (both columns are
-- varchar(255) latin1) and builds online (ALGORITHM=INPLACE, LOCK=NONE). To remove it:
--   DROP INDEX DataCollection_imageDirectory_fileTemplate ON DataCollection;

CREATE INDEX IF NOT EXISTS DataCollection_imageDirectory_fileTemplate
    ON DataCollection (imageDirectory, fileTemplate)
    ALGORITHM = INPLACE LOCK = NONE;
