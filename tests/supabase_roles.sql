-- Supabase's roles as its images create them: PostgREST logs in as authenticator and switches
-- to one of the three per request; service_role bypasses row-level security. plain_login is
-- an ordinary role with none of them, for the privilege tests.
CREATE ROLE anon NOLOGIN NOINHERIT;
CREATE ROLE authenticated NOLOGIN NOINHERIT;
CREATE ROLE service_role NOLOGIN NOINHERIT BYPASSRLS;
CREATE ROLE authenticator LOGIN NOINHERIT;
GRANT anon, authenticated, service_role TO authenticator;
CREATE ROLE plain_login LOGIN;
