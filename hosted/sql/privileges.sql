-- webinar_sessions, SQL-only edition: runs after sql/privileges.sql. The row-level security
-- policy calls current_user_id() as the querying role; here it is SQL, and what it calls must
-- be executable by that role too. They reveal only the caller's own claims.
GRANT EXECUTE ON FUNCTION webinar_sessions._claimed_caller(), webinar_sessions._quote(text),
    webinar_sessions._truncate(text, integer) TO PUBLIC;
