//! A real PostgreSQL cluster: initdb'd into a fresh folder, running the installed
//! `webinar_sessions` library (`cargo pgrx test` or `cargo pgrx install` puts it there),
//! listening on a free loopback port, stopped and removed when dropped (kept, with its log,
//! when the test failed). Server programs run as [`os_user`] when we are root.

use postgres::{Client, NoTls};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// Which build of the extension the clusters run: the Rust library (the default), or the
/// SQL-only edition for hosted Supabase, installed through pg_tle from the package that
/// `hosted/package.sh` wrote into `$WEBINAR_SESSIONS_TEST_HOSTED_DIR`
/// (`WEBINAR_SESSIONS_TEST_EDITION=hosted`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Edition {
    Rust,
    Hosted,
}

pub fn edition() -> Edition {
    match std::env::var("WEBINAR_SESSIONS_TEST_EDITION").as_deref() {
        Ok("hosted") => Edition::Hosted,
        Ok("rust") | Err(_) => Edition::Rust,
        Ok(other) => panic!("WEBINAR_SESSIONS_TEST_EDITION={other}: rust or hosted"),
    }
}

/// The cluster's superuser. In the hosted edition, as on hosted Supabase, `postgres` is an
/// ordinary role (with pgtle_admin) that installs and owns the extension.
pub fn superuser() -> &'static str {
    match edition() {
        Edition::Rust => "postgres",
        Edition::Hosted => "supabase_admin",
    }
}

/// The extension's name in pg_extension: the hosted edition is installed under a
/// database.dev-style name, `<handle>@webinar_sessions`, as `dbdev.install()` names it.
pub fn extension_name() -> &'static str {
    match edition() {
        Edition::Rust => "webinar_sessions",
        Edition::Hosted => HOSTED_EXTENSION,
    }
}

pub const HOSTED_EXTENSION: &str = "acme@webinar_sessions";

/// Whether the clusters are Citus clusters (`WEBINAR_SESSIONS_TEST_CITUS=on`): a coordinator,
/// which the tests talk to, and two worker nodes on other ports of this machine, all three
/// preloading `citus, webinar_sessions`; every database of [`Cluster::supabase_database`] has
/// its session table distributed (`webinar_sessions.distribute()`).
pub fn citus() -> bool {
    std::env::var("WEBINAR_SESSIONS_TEST_CITUS").as_deref() == Ok("on")
}

/// The worker nodes of a Citus cluster.
const CITUS_WORKERS: usize = 2;

/// What hosted Supabase has and the Rust build does not need: the role that installs
/// extensions, pg_tle and pg_cron (pg_cron lives in the postgres database only).
const HOSTED_ROLES: &str = "
    CREATE ROLE postgres LOGIN CREATEROLE CREATEDB;
    CREATE EXTENSION pg_tle;
    CREATE EXTENSION pg_cron;
    GRANT pgtle_admin TO postgres;
    GRANT USAGE ON SCHEMA cron TO postgres;
";

/// Supabase's roles (see the file for what each is for).
pub const SUPABASE_ROLES: &str = include_str!("../../supabase_roles.sql");

pub struct Cluster {
    pub port: u16,
    root: PathBuf,
    data: PathBuf,
    /// A Citus coordinator's worker nodes (none otherwise).
    workers: Vec<Cluster>,
}

fn bindir() -> PathBuf {
    let out = Command::new("pg_config")
        .arg("--bindir")
        .output()
        .expect("pg_config is on PATH");
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

/// The account PostgreSQL's programs run as: `$WEBINAR_SESSIONS_TEST_OS_USER` (default
/// `postgres`) when we are root, else None (ourselves). `os_user.sh` is the same rule for the
/// shell scripts.
pub fn os_user() -> Option<String> {
    let uid = unsafe { libc_geteuid() };
    (uid == 0).then(|| {
        std::env::var("WEBINAR_SESSIONS_TEST_OS_USER").unwrap_or_else(|_| "postgres".into())
    })
}

extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
}

/// Runs a PostgreSQL program as the cluster's OS user.
pub fn run_as_owner(program: &str, args: &[&str]) -> Output {
    let path = bindir().join(program);
    let mut command = match os_user() {
        Some(user) => {
            let mut c = Command::new("runuser");
            c.args(["-u", &user, "--"]).arg(&path);
            c
        }
        None => Command::new(&path),
    };
    let output = command
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    output
}

fn check(output: Output, what: &str) -> String {
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "{what} failed:\n{text}");
    text
}

/// An empty folder for a cluster's files, owned by the servers' account.
fn fresh_root(name: &str) -> PathBuf {
    let root = std::env::temp_dir()
        .join("webinar_sessions-clusters")
        .join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).unwrap();
    if let Some(user) = os_user() {
        check(
            Command::new("chown")
                .args([&user, root.to_str().unwrap()])
                .output()
                .unwrap(),
            "chown",
        );
    }
    root
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

impl Cluster {
    /// initdb and start a cluster; `settings` are appended to postgresql.conf. With
    /// [`citus`], a coordinator and its worker nodes, each with the same settings.
    pub fn start(name: &str, settings: &[&str]) -> Cluster {
        let mut cluster = Cluster::start_node(name, settings);
        if citus() {
            assert_eq!(edition(), Edition::Rust, "Citus runs the Rust build");
            cluster.workers = (1..=CITUS_WORKERS)
                .map(|i| Cluster::start_node(&format!("{name}-worker{i}"), settings))
                .collect();
        }
        cluster
    }

    fn start_node(name: &str, settings: &[&str]) -> Cluster {
        let root = fresh_root(name);
        let data = root.join("data");
        check(
            run_as_owner(
                "initdb",
                &[
                    "-D",
                    data.to_str().unwrap(),
                    "-U",
                    superuser(),
                    "-A",
                    "trust",
                    "--no-sync",
                    "-E",
                    "UTF8",
                ],
            ),
            "initdb",
        );
        let cluster = Cluster {
            port: free_port(),
            root,
            data,
            workers: Vec::new(),
        };
        let mut conf = vec![
            format!("port = {}", cluster.port),
            "listen_addresses = '127.0.0.1'".into(),
            "unix_socket_directories = ''".into(),
            "fsync = off".into(),
            "log_min_messages = log".into(),
        ];
        // tests/run.sh runs the client API suites once more on a server that does not preload
        // the library (CREATE EXTENSION then loads it late, as on a managed PostgreSQL).
        if edition() == Edition::Hosted {
            conf.push("shared_preload_libraries = 'pg_tle, pg_cron'".into());
        } else if citus() {
            // Citus first, as it requires; prepared transactions for its two-phase commits.
            conf.push("shared_preload_libraries = 'citus, webinar_sessions'".into());
            conf.push("max_prepared_transactions = 100".into());
            // tests/citus.rs tells where a delegated function ran by its call counts.
            conf.push("track_functions = 'pl'".into());
        } else if std::env::var("WEBINAR_SESSIONS_TEST_PRELOAD").as_deref() != Ok("off") {
            conf.push("shared_preload_libraries = 'webinar_sessions'".into());
        }
        // tests/run.sh runs the API suites once per heartbeat mode.
        if let Ok(mode) = std::env::var("WEBINAR_SESSIONS_TEST_HEARTBEAT_MODE") {
            conf.push(format!("webinar_sessions.heartbeat_mode = '{mode}'"));
        }
        conf.extend(settings.iter().map(|s| s.to_string()));
        cluster.append_conf(&conf.join("\n"));
        cluster.pg_ctl(&["start", "-w", "-t", "60"]);
        cluster.check_major_version();
        if edition() == Edition::Hosted {
            cluster
                .connect("postgres")
                .batch_execute(&format!("{SUPABASE_ROLES}\n{HOSTED_ROLES}"))
                .expect("Supabase's roles, pg_tle and pg_cron");
        }
        cluster
    }

    /// tests/run.sh runs suites on each PostgreSQL major version by putting that version's
    /// programs first on PATH and naming it in `$WEBINAR_SESSIONS_TEST_PG_MAJOR`: make sure the
    /// server really is that version, so a wrong PATH cannot pass for a run on it.
    fn check_major_version(&self) {
        let Ok(expected) = std::env::var("WEBINAR_SESSIONS_TEST_PG_MAJOR") else {
            return;
        };
        let version = server_version_num(&mut self.connect("postgres"));
        assert_eq!(
            (version / 10000).to_string(),
            expected,
            "the server is {version}, not PostgreSQL {expected}"
        );
    }

    pub fn data_dir(&self) -> &Path {
        &self.data
    }

    pub fn log_path(&self) -> PathBuf {
        self.root.join("server.log")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    pub fn append_conf(&self, lines: &str) {
        use std::io::Write;
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(self.data.join("postgresql.conf"))
            .unwrap();
        writeln!(file, "\n{lines}").unwrap();
    }

    pub fn pg_ctl(&self, args: &[&str]) -> String {
        let mut all = vec!["-D", self.data.to_str().unwrap(), "-l"];
        let log = self.log_path();
        all.push(log.to_str().unwrap());
        all.extend_from_slice(args);
        check(run_as_owner("pg_ctl", &all), &format!("pg_ctl {args:?}"))
    }

    pub fn url(&self, database: &str, user: &str) -> String {
        format!(
            "host=127.0.0.1 port={} dbname={database} user={user}",
            self.port
        )
    }

    pub fn connect_as(&self, database: &str, user: &str) -> Client {
        let url = self.url(database, user);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match Client::connect(&url, NoTls) {
                Ok(client) => return client,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => panic!("connect {url}: {e}"),
            }
        }
    }

    pub fn connect(&self, database: &str) -> Client {
        self.connect_as(database, superuser())
    }

    /// A new, empty database on this node, with Supabase's roles (cluster-wide, created once).
    fn database_with_roles(&self, database: &str) {
        let mut admin = self.connect("postgres");
        let roles_exist: bool = admin
            .query_one(
                "SELECT EXISTS (SELECT FROM pg_roles WHERE rolname = 'authenticator')",
                &[],
            )
            .unwrap()
            .get(0);
        if !roles_exist {
            // Two tests may race here; the loser's error is harmless.
            let _ = admin.batch_execute(SUPABASE_ROLES);
        }
        admin
            .batch_execute(&format!("CREATE DATABASE {database}"))
            .unwrap();
    }

    /// A new database with Supabase's roles (cluster-wide, created once) and the extension.
    pub fn supabase_database(&self, database: &str) -> Client {
        self.database_with_roles(database);
        let mut client = self.connect(database);
        match edition() {
            Edition::Rust if citus() => return self.distributed_database(client, database, None),
            Edition::Rust => client
                .batch_execute("CREATE EXTENSION webinar_sessions")
                .unwrap(),
            Edition::Hosted => self.install_hosted(&mut client, database),
        }
        client
    }

    /// `supabase_database` on a Citus cluster with the extension at release `version`
    /// (which must have distribute(): 0.6.0 or later), for updating it.
    pub fn distributed_database_at(&self, database: &str, version: &str) -> Client {
        assert!(
            citus(),
            "a distributed database needs WEBINAR_SESSIONS_TEST_CITUS=on"
        );
        self.database_with_roles(database);
        let client = self.connect(database);
        self.distributed_database(client, database, Some(version))
    }

    /// `supabase_database` on a Citus cluster, as its README section says: the database and
    /// Citus on every node, the worker nodes added, CREATE EXTENSION on the coordinator (Citus
    /// runs it on the workers), then distribute().
    fn distributed_database(
        &self,
        mut client: Client,
        database: &str,
        version: Option<&str>,
    ) -> Client {
        // One at a time: adding a node copies the roles to it, and two tests doing so at
        // once make the node's ALTER ROLEs collide ("tuple concurrently updated").
        static SETTING_UP: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _one_at_a_time = SETTING_UP.lock().unwrap_or_else(|e| e.into_inner());
        for worker in &self.workers {
            worker.database_with_roles(database);
            worker
                .connect(database)
                .batch_execute("CREATE EXTENSION citus")
                .unwrap();
        }
        // Citus connects to the worker nodes as the querying role, and whenever a node is
        // added (to any database) copies the roles its objects need, with the coordinator's
        // attributes: the request roles must be LOGIN on the coordinator too (pg_hba.conf
        // keeps them out of it in production: README, "Citus").
        let request_roles_login =
            "ALTER ROLE anon LOGIN; ALTER ROLE authenticated LOGIN; ALTER ROLE service_role LOGIN";
        self.connect("postgres")
            .batch_execute(request_roles_login)
            .unwrap();
        client.batch_execute("CREATE EXTENSION citus").unwrap();
        client
            .execute(
                "SELECT citus_set_coordinator_host('127.0.0.1', $1)",
                &[&i32::from(self.port)],
            )
            .unwrap();
        for worker in &self.workers {
            client
                .execute(
                    "SELECT citus_add_node('127.0.0.1', $1)",
                    &[&i32::from(worker.port)],
                )
                .unwrap();
        }
        // And on the worker nodes (README): Citus copies there only the roles its objects
        // need, anon not among them.
        for worker in &self.workers {
            worker
                .connect("postgres")
                .batch_execute(request_roles_login)
                .unwrap();
        }
        // Two transactions: distribute() prepares the worker nodes over connections of its
        // own, which must see the extension there.
        let at_version = version.map_or(String::new(), |v| format!(" VERSION '{v}'"));
        client
            .batch_execute(&format!("CREATE EXTENSION webinar_sessions{at_version}"))
            .unwrap();
        client
            .batch_execute("SELECT webinar_sessions.distribute(4)")
            .unwrap();
        // distribute() set citus.propagate_set_commands for the database: new sessions have it.
        drop(client);
        self.connect(database)
    }

    /// A Citus coordinator's worker nodes (empty otherwise).
    pub fn workers(&self) -> &[Cluster] {
        &self.workers
    }

    /// Installs the hosted edition into `database` the way hosted Supabase does: pg_tle is
    /// there (the superuser created it), and `postgres`, not a superuser, registers the
    /// package with pgtle.install_extension (as dbdev.install() does) and creates the
    /// extension in its own schema (hosted/README.md).
    pub fn install_hosted(&self, admin: &mut Client, database: &str) {
        self.install_hosted_package(admin, database, &hosted_dir());
    }

    /// `install_hosted` from the package in `dir`.
    pub fn install_hosted_package(&self, admin: &mut Client, database: &str, dir: &str) {
        admin
            .batch_execute(&format!(
                "CREATE EXTENSION IF NOT EXISTS pg_tle;
                 GRANT CREATE ON DATABASE {database} TO postgres;
                 GRANT ALL ON SCHEMA public TO postgres;"
            ))
            .unwrap();
        let (version, script) = hosted_package_in(dir);
        let mut owner = self.connect_as(database, "postgres");
        owner
            .execute(
                "SELECT pgtle.install_extension($1, $2, 'webinar_sessions (test)', $3, NULL)",
                &[&HOSTED_EXTENSION, &version, &script],
            )
            .unwrap();
        owner
            .batch_execute(&format!(
                "CREATE SCHEMA webinar_sessions;
                 CREATE EXTENSION \"{HOSTED_EXTENSION}\" SCHEMA webinar_sessions"
            ))
            .unwrap();
    }
}

/// The default version and install script of the hosted package in
/// `$WEBINAR_SESSIONS_TEST_HOSTED_DIR`.
pub fn hosted_package() -> (String, String) {
    hosted_package_in(&hosted_dir())
}

/// `$WEBINAR_SESSIONS_TEST_HOSTED_DIR`: the folder hosted/package.sh wrote.
pub fn hosted_dir() -> String {
    std::env::var("WEBINAR_SESSIONS_TEST_HOSTED_DIR")
        .expect("WEBINAR_SESSIONS_TEST_HOSTED_DIR names the folder hosted/package.sh wrote")
}

/// The default version and install script of the hosted package in `dir`.
pub fn hosted_package_in(dir: &str) -> (String, String) {
    let control = std::fs::read_to_string(format!("{dir}/webinar_sessions.control")).unwrap();
    let version = control
        .lines()
        .find_map(|l| l.strip_prefix("default_version = '"))
        .and_then(|v| v.strip_suffix('\''))
        .expect("default_version in the control file")
        .to_string();
    let script = std::fs::read_to_string(format!("{dir}/webinar_sessions--{version}.sql")).unwrap();
    (version, script)
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // A failing test leaves the cluster's files (and its log) behind for a look.
        self.shut_down(std::thread::panicking());
    }
}

impl Cluster {
    /// Stops the server at once and, unless `keep_files`, removes everything it wrote.
    fn shut_down(&self, keep_files: bool) {
        for worker in &self.workers {
            worker.shut_down(keep_files);
        }
        let log = self.log_path();
        let _ = run_as_owner(
            "pg_ctl",
            &[
                "-D",
                self.data.to_str().unwrap(),
                "-l",
                log.to_str().unwrap(),
                "stop",
                "-m",
                "immediate",
            ],
        );
        if !keep_files {
            let _ = std::fs::remove_dir_all(&self.root);
        }
    }
}

/// The server's version as a number, e.g. 180006 for 18.6.
pub fn server_version_num(client: &mut Client) -> i32 {
    client
        .query_one("SELECT current_setting('server_version_num')::int", &[])
        .unwrap()
        .get(0)
}

/// Polls `condition` until it holds or `timeout` passes; returns whether it held.
pub fn eventually(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

static SHARED: std::sync::OnceLock<Cluster> = std::sync::OnceLock::new();

extern "C" {
    fn atexit(callback: extern "C" fn()) -> i32;
}

extern "C" fn stop_shared_cluster() {
    if let Some(cluster) = SHARED.get() {
        cluster.shut_down(false);
    }
}

/// One cluster shared by all tests of a test binary (each test uses its own database); it is
/// stopped when the binary exits. The worker is idle in it: these tests drive sweeps and
/// flushes (`settle`) themselves.
pub fn shared_cluster(name: &str) -> &'static Cluster {
    SHARED.get_or_init(|| {
        let cluster = Cluster::start(
            name,
            &[
                "webinar_sessions.sweeper_enabled = off",
                "webinar_sessions.flush_interval = '1h'",
            ],
        );
        unsafe { atexit(stop_shared_cluster) };
        cluster
    })
}

// Stopping and starting a cluster again, a hot standby of it, and calls that may meet a server
// going away (tests/faults.rs).

impl Cluster {
    /// `pg_ctl stop -m <mode>` (`smart`, `fast` or `immediate`); returns once the server is down.
    pub fn stop(&self, mode: &str) {
        self.pg_ctl(&["stop", "-m", mode, "-w", "-t", "60"]);
    }

    /// Starts a stopped server again (through crash recovery after an immediate stop) and
    /// returns once it accepts connections.
    pub fn start_again(&self) {
        self.pg_ctl(&["start", "-w", "-t", "60"]);
    }

    /// A streaming hot standby of this cluster, started: `pg_basebackup -R` (initdb -A trust
    /// lets 127.0.0.1 connect for replication), the primary's postgresql.conf with a port of
    /// its own and `settings` appended.
    pub fn standby(&self, name: &str, settings: &[&str]) -> Cluster {
        let root = fresh_root(name);
        let data = root.join("data");
        let port = self.port.to_string();
        check(
            run_as_owner(
                "pg_basebackup",
                &[
                    "-D",
                    data.to_str().unwrap(),
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &port,
                    "-U",
                    superuser(),
                    "-R",
                    "-X",
                    "stream",
                    "-c",
                    "fast",
                    "--no-sync",
                ],
            ),
            "pg_basebackup",
        );
        let standby = Cluster {
            port: free_port(),
            root,
            data,
            workers: Vec::new(),
        };
        let mut conf = vec![format!("port = {}", standby.port)];
        conf.extend(settings.iter().map(|s| s.to_string()));
        standby.append_conf(&conf.join("\n"));
        standby.pg_ctl(&["start", "-w", "-t", "60"]);
        standby
    }

    /// Promotes a standby and returns once it accepts writes.
    pub fn promote(&self) {
        self.pg_ctl(&["promote", "-w", "-t", "60"]);
    }
}

impl Cluster {
    /// kill -9 of the postmaster, as a crash; returns once the server accepts connections
    /// again (after crash recovery).
    pub fn kill_postmaster_and_restart(&self) {
        let pid = std::fs::read_to_string(self.data.join("postmaster.pid")).unwrap();
        let pid = pid.lines().next().unwrap().trim().to_string();
        assert!(Command::new("kill")
            .args(["-9", &pid])
            .status()
            .unwrap()
            .success());
        // The orphaned backends notice the postmaster's death and exit; then start afresh.
        assert!(eventually(Duration::from_secs(30), || {
            Command::new("kill")
                .args(["-0", &pid])
                .stderr(std::process::Stdio::null())
                .status()
                .map(|s| !s.success())
                .unwrap_or(true)
        }));
        // Orphaned backends may hold the old shared memory a little longer: retry the start.
        let (data, log) = (self.data.to_str().unwrap(), self.log_path());
        assert!(eventually(Duration::from_secs(30), || {
            run_as_owner(
                "pg_ctl",
                &[
                    "-D",
                    data,
                    "-l",
                    log.to_str().unwrap(),
                    "start",
                    "-w",
                    "-t",
                    "60",
                ],
            )
            .status
            .success()
        }));
    }
}
