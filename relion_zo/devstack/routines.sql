DROP PROCEDURE IF EXISTS upsert_processing_program_message
$$
-- The one ISPyB stored procedure relion_zo calls, for the local stack only: a production ISPyB
-- has its own (ispyb-database's schemas/ispyb/routines.sql). Same name, parameters and effect:
-- a new AutoProcProgramMessage row when p_id is NULL, else that row updated where given.
CREATE PROCEDURE upsert_processing_program_message(
    INOUT p_id int(10) unsigned,
    p_programId int(10) unsigned,
    p_severity varchar(255),
    p_message varchar(255),
    p_description text
)
MODIFIES SQL DATA
SQL SECURITY DEFINER
BEGIN
    IF p_id IS NOT NULL THEN
        UPDATE AutoProcProgramMessage
           SET autoProcProgramId = COALESCE(p_programId, autoProcProgramId),
               severity = COALESCE(p_severity, severity),
               message = COALESCE(p_message, message),
               description = COALESCE(p_description, description)
         WHERE autoProcProgramMessageId = p_id;
    ELSEIF p_programId IS NOT NULL THEN
        INSERT INTO AutoProcProgramMessage (autoProcProgramId, severity, message, description)
        VALUES (p_programId, p_severity, p_message, p_description);
        SET p_id = LAST_INSERT_ID();
    ELSE
        SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'p_id or p_programId must be given';
    END IF;
END
