-- webinar_sessions, SQL-only edition: what src/identity.rs, src/input.rs and the settings of
-- src/guc.rs do in the Rust build, in SQL and plpgsql. Same names, arguments, results,
-- SQLSTATEs and messages (tests/hosted.sh compares both editions' answers to the hostile-input
-- table). Loaded before sql/schema.sql, whose row-level security policy calls
-- current_user_id().
--
-- No SET search_path on these: they run on every heartbeat, and their callers are this
-- schema's SECURITY DEFINER functions, which pin it. Every name is qualified.

-- `text` in double quotes for a message: \\, \", \t, \n, \r, and \u{hex} for other control
-- characters (identity::quote in the Rust build). Linear in the length: one replace per kind
-- of character, at most 62 kinds of control character.
CREATE FUNCTION webinar_sessions._quote(p_text text)
RETURNS text
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
AS $$
DECLARE
    v_out text := pg_catalog.replace(pg_catalog.replace(p_text, '\', '\\'), '"', '\"');
    v_char text;
BEGIN
    v_out := pg_catalog.replace(pg_catalog.replace(pg_catalog.replace(v_out,
        pg_catalog.chr(9), '\t'), pg_catalog.chr(10), '\n'), pg_catalog.chr(13), '\r');
    FOR v_char IN
        SELECT DISTINCT m[1] FROM pg_catalog.regexp_matches(v_out, '([\u0001-\u001f\u007f-\u009f])', 'g') AS m
    LOOP
        v_out := pg_catalog.replace(v_out, v_char, '\u{' || pg_catalog.to_hex(pg_catalog.ascii(v_char)) || '}');
    END LOOP;
    RETURN '"' || v_out || '"';
END
$$;

-- The first max characters of text, and "..." when there were more (identity::truncate).
CREATE FUNCTION webinar_sessions._truncate(p_text text, p_max integer)
RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT CASE WHEN pg_catalog.length(p_text) > p_max THEN pg_catalog.left(p_text, p_max) || '...'
                ELSE p_text END;
$$;

-- Whether text is a uuid in one of the two spellings a JWT sub takes: 8-4-4-4-12 hex digits,
-- or 32 without hyphens. (String functions, not a regular expression: ten times cheaper, and
-- this runs on every call; SQL, so that PostgreSQL inlines it into its callers.)
CREATE FUNCTION webinar_sessions._uuid_shaped(p_text text)
RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT coalesce((pg_catalog.length(p_text) = 32
                     OR (pg_catalog.length(p_text) = 36 AND pg_catalog.substr(p_text, 9, 1) = '-'
                         AND pg_catalog.substr(p_text, 14, 1) = '-' AND pg_catalog.substr(p_text, 19, 1) = '-'
                         AND pg_catalog.substr(p_text, 24, 1) = '-'))
                    AND pg_catalog.translate(p_text, '0123456789abcdefABCDEF-', '') = ''
                    AND pg_catalog.length(pg_catalog.replace(p_text, '-', '')) = 32, false);
$$;

-- The user a sub claim names, from the claim's value as jsonb writes it (jsonb -> 'sub', as
-- text): a JSON string holding a non-nil uuid in one of the two spellings _uuid_shaped
-- allows. NULL for any other length, shape, or JSON type (only a string's text starts with a
-- quote, and a 32-hex-digit string is 34 characters long with its quotes). Hex digits are
-- checked by the uuid cast, which RAISES for a string of the right shape that is not hex (or
-- a number that looks like one): callers call it in an exception block, and take the
-- general reading when it raises or gives NULL. SQL, so that PostgreSQL inlines it.
CREATE FUNCTION webinar_sessions._sub_user(p_sub_json text)
RETURNS uuid
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT CASE WHEN pg_catalog.length(p_sub_json) = 34 AND pg_catalog.left(p_sub_json, 1) = '"'
                  OR p_sub_json LIKE '"________-____-____-____-____________"'
                THEN NULLIF(pg_catalog.btrim(p_sub_json, '"')::uuid, '00000000-0000-0000-0000-000000000000') END;
$$;

-- What the request's claims say about the caller (identity::claimed_caller): kind 'user'
-- with user_id, 'nobody' (no claims, or no sub), or 'invalid' with why.
--
-- The claims are read as json (text kept as written, like serde_json, which the Rust build
-- uses: any number, and \u0000 in a string). Whether they parse at all is only known by
-- trying, in an exception block: a subtransaction, which a parallel query cannot start, so
-- this and everything that calls it is PARALLEL UNSAFE.
CREATE FUNCTION webinar_sessions._claimed_caller(OUT kind text, OUT user_id uuid, OUT why text)
LANGUAGE plpgsql STABLE PARALLEL UNSAFE
AS $$
DECLARE
    v_text text := pg_catalog.current_setting('request.jwt.claims', true);
    v_claims json;
    v_sub_json json;
    v_sub text;
    v_unescaped text;
    -- Rust's str::trim: Unicode White_Space. An empty setting is what a transaction-local
    -- value leaves behind after its transaction.
    v_space text;
BEGIN
    -- The common case first, in few expressions: PostgreSQL sets each up anew in every
    -- transaction, and a PostgREST request is one transaction with one call. Claims that
    -- parse as jsonb with a sub that _sub_user accepts give what the general reading below
    -- gives (jsonb and json read the same text alike, but for what jsonb refuses: \u0000,
    -- numbers out of numeric's range; then, and for anything else, the general reading
    -- says why). Only for an object, so that a caller without claims (anon) raises nothing.
    IF pg_catalog.left(v_text, 1) = '{' THEN
        BEGIN
            -- (Into v_sub first: _sub_user reads its argument three times.)
            v_sub := (v_text::jsonb -> 'sub')::text;
            user_id := webinar_sessions._sub_user(v_sub);
        EXCEPTION WHEN OTHERS THEN
            user_id := NULL;
        END;
        IF user_id IS NOT NULL THEN
            kind := 'user';
            RETURN;
        END IF;
    END IF;
    v_space := E' \t\n\r\f\u000b\u0085\u00a0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000';
    IF v_text IS NULL OR pg_catalog.btrim(v_text, v_space) = '' THEN
        -- PostgREST before v9 set the sub claim alone.
        v_sub := pg_catalog.current_setting('request.jwt.claim.sub', true);
        IF v_sub IS NULL OR pg_catalog.btrim(v_sub, v_space) = '' THEN
            kind := 'nobody';
            RETURN;
        END IF;
    ELSE
        BEGIN
            v_claims := v_text::json;
        EXCEPTION WHEN OTHERS THEN
            kind := 'invalid';
            why := 'request.jwt.claims is not valid JSON';
            RETURN;
        END;
        -- PostgreSQL reads no field of a json object holding \u0000 (it cannot be text):
        -- stand U+E000 (private use) in for it, and show it as \u{0} again below.
        WHILE pg_catalog.strpos(v_text, '\u0000') > 0 LOOP
            v_unescaped := pg_catalog.regexp_replace(v_text, '(^|[^\\])((\\\\)*)\\u0000', '\1\2\\ue000', 'g');
            EXIT WHEN v_unescaped = v_text;
            v_text := v_unescaped;
            v_claims := v_text::json;
        END LOOP;
        -- (json is text: each operator parses it again, so this asks as few as it can.)
        v_sub_json := v_claims -> 'sub';
        IF v_sub_json IS NULL AND pg_catalog.json_typeof(v_claims) <> 'object' THEN
            kind := 'invalid';
            why := 'request.jwt.claims is not a JSON object';
            RETURN;
        ELSIF v_sub_json IS NULL OR pg_catalog.json_typeof(v_sub_json) = 'null' THEN
            kind := 'nobody';
            RETURN;
        ELSIF pg_catalog.json_typeof(v_sub_json) <> 'string' THEN
            kind := 'invalid';
            why := 'the sub claim is not a string';
            RETURN;
        END IF;
        v_sub := v_sub_json #>> '{}';
    END IF;
    IF webinar_sessions._uuid_shaped(v_sub) THEN
        user_id := v_sub::uuid;
        IF user_id = '00000000-0000-0000-0000-000000000000' THEN
            kind := 'invalid';
            user_id := NULL;
            why := 'the sub claim is the nil uuid';
        ELSE
            kind := 'user';
        END IF;
    ELSE
        kind := 'invalid';
        why := 'the sub claim '
            || pg_catalog.replace(webinar_sessions._quote(webinar_sessions._truncate(v_sub, 64)), pg_catalog.chr(57344), '\u{0}')
            || ' is not a uuid';
    END IF;
END
$$;

-- The signed-in caller's user id (the sub claim), or NULL when there is none. The row-level
-- security policy compares rows against it, as the querying role; it never raises. SECURITY
-- DEFINER, so that the helpers it calls need not be executable by everyone: it reads only the
-- caller's own settings.
CREATE FUNCTION webinar_sessions.current_user_id()
RETURNS uuid
LANGUAGE plpgsql STABLE PARALLEL UNSAFE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
-- (plpgsql, not sql: a SECURITY DEFINER sql function is planned again in every transaction.)
AS $$
DECLARE
    v_me record := webinar_sessions._claimed_caller();
BEGIN
    RETURN CASE WHEN v_me.kind = 'user' THEN v_me.user_id END;
END
$$;

-- May the caller act for any user? True for superusers, the extension's owner and members of
-- service_role, judged by the role chosen with SET ROLE (or the session's user), which a
-- SECURITY DEFINER function does not change: the Rust build's GetOuterUserId().
CREATE FUNCTION webinar_sessions._caller_is_service()
RETURNS boolean
LANGUAGE plpgsql STABLE PARALLEL SAFE
AS $$
DECLARE
    v_role text := pg_catalog.current_setting('role');
    v_outer name := CASE WHEN v_role = 'none' THEN session_user ELSE v_role END;
    v_owner oid := (SELECT n.nspowner FROM pg_catalog.pg_namespace AS n WHERE n.nspname = 'webinar_sessions');
BEGIN
    RETURN (v_owner IS NOT NULL AND pg_catalog.pg_has_role(v_outer, v_owner, 'USAGE'))
        OR (pg_catalog.to_regrole('service_role') IS NOT NULL
            AND pg_catalog.pg_has_role(v_outer, 'service_role', 'USAGE'));
END
$$;

-- Whether a session id is acceptable: 1 to 128 characters, none of them a control character
-- (Rust's char::is_control: the C0 and C1 controls; text cannot hold U+0000). The one check
-- of _checked_user and _check_batch; SQL, so that PostgreSQL inlines it into them.
CREATE FUNCTION webinar_sessions._session_id_ok(p_session_id text)
RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT pg_catalog.length(p_session_id) BETWEEN 1 AND 128
       AND p_session_id !~ '[\u0001-\u001f\u007f-\u009f]';
$$;

-- Why a session id is unacceptable, with the value quoted; NULL when it is fine
-- (input::session_id_problem).
CREATE FUNCTION webinar_sessions._session_id_problem(p_session_id text)
RETURNS text
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
AS $$
DECLARE
    v_length integer := pg_catalog.length(p_session_id);
    v_at integer;
    v_problem text;
BEGIN
    IF v_length = 0 THEN
        v_problem := 'must not be empty';
    ELSIF v_length > 128 THEN
        v_problem := 'is ' || v_length || ' characters long; at most 128 are allowed';
    ELSE
        v_at := pg_catalog.regexp_instr(p_session_id, '[\u0001-\u001f\u007f-\u009f]');
        IF v_at = 0 THEN
            RETURN NULL;
        END IF;
        v_problem := 'must not contain control characters (U+'
            || pg_catalog.upper(pg_catalog.lpad(pg_catalog.to_hex(pg_catalog.ascii(pg_catalog.substr(p_session_id, v_at, 1))), 4, '0'))
            || ' at character ' || v_at || ')';
    END IF;
    RETURN v_problem || ' (got ' || webinar_sessions._quote(webinar_sessions._truncate(p_session_id, 40)) || ')';
END
$$;

-- Checks the arguments of enter / heartbeat / leave and returns the user the call acts for
-- (input::checked_user and identity::acting_user).
CREATE FUNCTION webinar_sessions._checked_user(webinar_id uuid, session_id text, user_id uuid)
RETURNS uuid
LANGUAGE plpgsql STABLE PARALLEL UNSAFE
AS $$
DECLARE
    v_sub text;
    v_user uuid;
    v_me record;
BEGIN
    -- The common case in two expressions, without calling _claimed_caller (see there: every
    -- expression and every call costs its set-up again in each transaction): good arguments,
    -- no user_id, claims whose sub _sub_user accepts. The block catches what reading the
    -- claims may raise; whatever is not this case takes the checks below, in their order,
    -- which say why.
    BEGIN
        v_sub := (pg_catalog.current_setting('request.jwt.claims', true)::jsonb -> 'sub')::text;
        v_user := CASE WHEN user_id IS NULL AND webinar_id <> '00000000-0000-0000-0000-000000000000'
                            AND webinar_sessions._session_id_ok(session_id)
                       THEN webinar_sessions._sub_user(v_sub) END;
    EXCEPTION WHEN OTHERS THEN
        v_user := NULL;
    END;
    IF v_user IS NOT NULL THEN
        RETURN v_user;
    END IF;
    IF webinar_id IS NULL THEN
        RAISE EXCEPTION 'webinar_id must not be null' USING ERRCODE = 'null_value_not_allowed';
    ELSIF webinar_id = '00000000-0000-0000-0000-000000000000' THEN
        RAISE EXCEPTION 'webinar_id must not be the nil uuid' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF session_id IS NULL THEN
        RAISE EXCEPTION 'session_id must not be null' USING ERRCODE = 'null_value_not_allowed';
    ELSIF NOT webinar_sessions._session_id_ok(session_id) THEN
        RAISE EXCEPTION 'session_id %', webinar_sessions._session_id_problem(session_id)
            USING ERRCODE = 'invalid_parameter_value';
    END IF;

    v_me := webinar_sessions._claimed_caller();
    IF user_id IS NOT NULL THEN
        IF v_me.kind = 'user' AND v_me.user_id = user_id THEN
            RETURN user_id;
        ELSIF webinar_sessions._caller_is_service() THEN
            IF user_id = '00000000-0000-0000-0000-000000000000' THEN
                RAISE EXCEPTION 'user_id must not be the nil uuid' USING ERRCODE = 'invalid_parameter_value';
            END IF;
            RETURN user_id;
        ELSIF v_me.kind = 'user' THEN
            RAISE EXCEPTION 'user_id names another user' USING ERRCODE = 'insufficient_privilege',
                HINT = 'Only service_role may act for other users; leave user_id out to act for yourself.';
        ELSE
            RAISE EXCEPTION 'user_id may be given only by service_role or for the caller''s own id'
                USING ERRCODE = 'insufficient_privilege';
        END IF;
    END IF;
    CASE v_me.kind
    WHEN 'user' THEN
        RETURN v_me.user_id;
    WHEN 'nobody' THEN
        RAISE EXCEPTION 'no caller identity: request.jwt.claims has no sub claim'
            USING ERRCODE = 'insufficient_privilege', HINT = 'Sign in, or call as service_role with user_id.';
    ELSE
        RAISE EXCEPTION 'no caller identity: %', v_me.why USING ERRCODE = 'insufficient_privilege';
    END CASE;
END
$$;

-- The first element of ids that is NULL or the nil uuid, as "name[i] must not be ...".
CREATE FUNCTION webinar_sessions._check_ids(p_name text, p_ids uuid[])
RETURNS void
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
AS $$
DECLARE
    v_at bigint;
    v_id uuid;
BEGIN
    SELECT u.at, u.id INTO v_at, v_id
      FROM unnest(p_ids) WITH ORDINALITY AS u(id, at)
     WHERE u.id IS NULL OR u.id = '00000000-0000-0000-0000-000000000000'
     ORDER BY u.at LIMIT 1;
    IF v_at IS NOT NULL AND v_id IS NULL THEN
        RAISE EXCEPTION '%[%] must not be null', p_name, v_at USING ERRCODE = 'null_value_not_allowed';
    ELSIF v_at IS NOT NULL THEN
        RAISE EXCEPTION '%[%] must not be the nil uuid', p_name, v_at USING ERRCODE = 'invalid_parameter_value';
    END IF;
END
$$;

-- Checks the arguments of heartbeat_batch (input::check_batch): three arrays of the same
-- length, at most 10000 long, every element valid.
CREATE FUNCTION webinar_sessions._check_batch(webinar_ids uuid[], session_ids text[], user_ids uuid[])
RETURNS void
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
AS $$
DECLARE
    v_lengths integer[];
    v_at bigint;
    v_session text;
BEGIN
    IF webinar_ids IS NULL THEN
        RAISE EXCEPTION 'webinar_ids must not be null' USING ERRCODE = 'null_value_not_allowed';
    ELSIF session_ids IS NULL THEN
        RAISE EXCEPTION 'session_ids must not be null' USING ERRCODE = 'null_value_not_allowed';
    ELSIF user_ids IS NULL THEN
        RAISE EXCEPTION 'user_ids must not be null' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    v_lengths := ARRAY[pg_catalog.cardinality(webinar_ids), pg_catalog.cardinality(session_ids),
                       pg_catalog.cardinality(user_ids)];
    IF v_lengths[2] <> v_lengths[1] OR v_lengths[3] <> v_lengths[1] THEN
        RAISE EXCEPTION 'webinar_ids, session_ids and user_ids must have the same length (got %, % and %)',
            v_lengths[1], v_lengths[2], v_lengths[3] USING ERRCODE = 'invalid_parameter_value';
    ELSIF v_lengths[1] > 10000 THEN
        RAISE EXCEPTION 'webinar_ids holds % sessions; one batch takes at most 10000', v_lengths[1]
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    PERFORM webinar_sessions._check_ids('webinar_ids', webinar_ids);
    SELECT u.at, u.session_id INTO v_at, v_session
      FROM unnest(session_ids) WITH ORDINALITY AS u(session_id, at)
     WHERE u.session_id IS NULL OR NOT webinar_sessions._session_id_ok(u.session_id)
     ORDER BY u.at LIMIT 1;
    IF v_at IS NOT NULL AND v_session IS NULL THEN
        RAISE EXCEPTION 'session_ids[%] must not be null', v_at USING ERRCODE = 'null_value_not_allowed';
    ELSIF v_at IS NOT NULL THEN
        RAISE EXCEPTION 'session_ids[%] %', v_at, webinar_sessions._session_id_problem(v_session)
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    PERFORM webinar_sessions._check_ids('user_ids', user_ids);
END
$$;

-- A setting in seconds (src/guc.rs), its default when unset, read as PostgreSQL reads an
-- integer setting with a unit: a decimal, octal (010) or hex (0x10) integer, or a decimal
-- fraction or exponent (2.5, 1e2), then optionally us, ms, s, min, h or d, rounded to whole
-- seconds half to even. Without the library PostgreSQL keeps webinar_sessions.* as plain text
-- placeholders, so a bad value is refused here, when a call uses it (22023), not by SET.
CREATE FUNCTION webinar_sessions._setting_seconds(p_name text, p_default integer, p_max integer)
RETURNS integer
LANGUAGE plpgsql STABLE PARALLEL SAFE
AS $$
DECLARE
    v_text text := pg_catalog.current_setting(p_name, true);
    v_parts text[];
    v_digits text;
    v_number double precision;
    v_seconds double precision;
BEGIN
    IF v_text IS NULL OR v_text = '' THEN
        RETURN p_default;
    END IF;
    -- The common spellings (and how PostgreSQL shows a value it knows: 120 s is '2min'),
    -- without the general parse below: this runs on every heartbeat.
    -- (String functions: a regular expression costs several microseconds.)
    v_digits := pg_catalog.rtrim(v_text, 'dhimns');
    IF pg_catalog.length(v_digits) BETWEEN 1 AND 9 AND pg_catalog.left(v_digits, 1) <> '0'
       AND pg_catalog.translate(v_digits, '0123456789', '') = ''
       AND pg_catalog.substr(v_text, pg_catalog.length(v_digits) + 1) IN ('', 's', 'min', 'h', 'd') THEN
        v_seconds := v_digits::bigint * CASE pg_catalog.substr(v_text, pg_catalog.length(v_digits) + 1)
            WHEN 'min' THEN 60 WHEN 'h' THEN 3600 WHEN 'd' THEN 86400 ELSE 1 END;
        IF v_seconds BETWEEN 1 AND p_max THEN
            RETURN v_seconds;
        END IF;
    END IF;
    v_parts := pg_catalog.regexp_match(v_text,
        '^\s*([-+]?)(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*|[0-9]*\.?[0-9]*(?:[eE][-+]?[0-9]+)?)\s*([a-z]*)\s*$');
    IF v_parts IS NULL OR v_parts[2] !~ '[0-9]' OR v_parts[3] NOT IN ('', 'us', 'ms', 's', 'min', 'h', 'd') THEN
        RAISE EXCEPTION 'invalid value for parameter "%": "%"', p_name, v_text
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Valid units for this parameter are "us", "ms", "s", "min", "h", and "d".';
    END IF;
    v_number := CASE
        WHEN v_parts[2] ~ '^0[xX]' THEN ('x' || pg_catalog.lpad(pg_catalog.substr(v_parts[2], 3), 16, '0'))::bit(64)::bigint
        WHEN v_parts[2] ~ '^0[0-7]+$' THEN (SELECT sum(d::integer * 8 ^ (pg_catalog.length(v_parts[2]) - i))
                                              FROM unnest(pg_catalog.string_to_array(v_parts[2], NULL)) WITH ORDINALITY AS o(d, i))
        ELSE v_parts[2]::double precision END;
    IF v_parts[1] = '-' THEN
        v_number := -v_number;
    END IF;
    v_seconds := pg_catalog.round(v_number * CASE v_parts[3]
        WHEN 'us' THEN 0.000001 WHEN 'ms' THEN 0.001 WHEN 'min' THEN 60 WHEN 'h' THEN 3600 WHEN 'd' THEN 86400
        ELSE 1 END);
    IF v_seconds BETWEEN 1 AND p_max THEN
        RETURN v_seconds;
    END IF;
    RAISE EXCEPTION '% s is outside the valid range for parameter "%" (1 s .. % s)', v_seconds, p_name, p_max
        USING ERRCODE = 'invalid_parameter_value';
END
$$;

-- The heartbeat interval clients should use, in seconds (webinar_sessions.heartbeat_interval).
-- Unset, or the default as PostgreSQL shows it when the Rust library (loaded for another
-- database of the server) defines the setting: 120 at once, in the caller's expression
-- (PostgreSQL inlines this); anything else is read by _setting_seconds.
CREATE FUNCTION webinar_sessions._heartbeat_interval_s()
RETURNS integer
LANGUAGE sql STABLE PARALLEL SAFE
AS $$
    SELECT CASE WHEN coalesce(pg_catalog.current_setting('webinar_sessions.heartbeat_interval', true), '') IN ('', '2min')
                THEN 120
                ELSE webinar_sessions._setting_seconds('webinar_sessions.heartbeat_interval', 120, 86400) END;
$$;

-- The default staleness limit of a sweep, in seconds (webinar_sessions.stale_after).
CREATE FUNCTION webinar_sessions._stale_after_s()
RETURNS integer
LANGUAGE sql STABLE PARALLEL SAFE
AS $$
    SELECT webinar_sessions._setting_seconds('webinar_sessions.stale_after', 300, 2592000);
$$;
