//! Real metric servers for the backend tests, started per test on free loopback
//! ports under the cluster's state dir and stopped when dropped: Graphite (Debian's
//! `carbon-cache` and `graphite-web`, run by Django's server) and InfluxDB 1.x
//! (Debian's `influxd`, with authentication on). `e2e/cluster.sh deps` installs
//! the packages.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tokio::process::{Child, Command};

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn spawn(cmd: &mut Command, log: &Path) -> Result<Child> {
    let out = std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let err = out.try_clone()?;
    cmd.stdout(Stdio::from(out))
        .stderr(Stdio::from(err))
        .kill_on_drop(true)
        .spawn()
        .context("starting a metric server (installed by e2e/cluster.sh deps)")
}

async fn wait_http(url: &str, what: &str, log: &Path, timeout: Duration) -> Result<()> {
    let http = reqwest::Client::builder().no_proxy().build()?;
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(r) = http.get(url).send().await
            && r.status().is_success()
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            let tail = std::fs::read_to_string(log).unwrap_or_default();
            let tail: Vec<&str> = tail.lines().rev().take(15).collect();
            bail!(
                "{what} did not answer {url} within {timeout:?}; log {}:\n{}",
                log.display(),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// carbon-cache (plaintext receiver) and graphite-web's render API.
pub struct Graphite {
    pub url: String,
    line_port: u16,
    _carbon: Child,
    _web: Child,
    dir: PathBuf,
}

impl Graphite {
    pub async fn start(state_dir: &Path, name: &str) -> Result<Graphite> {
        let dir = state_dir.join(format!("graphite-{name}"));
        let _ = std::fs::remove_dir_all(&dir);
        for sub in ["conf", "storage/whisper", "storage/lists", "log", "py"] {
            std::fs::create_dir_all(dir.join(sub))?;
        }
        let (line, pickle, query, web) = (free_port()?, free_port()?, free_port()?, free_port()?);
        let d = dir.display();
        std::fs::write(
            dir.join("conf/carbon.conf"),
            format!(
                "[cache]\nSTORAGE_DIR = {d}/storage\nLOCAL_DATA_DIR = {d}/storage/whisper\n\
                 WHITELISTS_DIR = {d}/storage/lists\nCONF_DIR = {d}/conf\nLOG_DIR = {d}/log\n\
                 PID_DIR = {d}\nENABLE_LOGROTATION = False\nUSER =\nMAX_CACHE_SIZE = inf\n\
                 MAX_UPDATES_PER_SECOND = 500\nMAX_CREATES_PER_MINUTE = inf\n\
                 LINE_RECEIVER_INTERFACE = 127.0.0.1\nLINE_RECEIVER_PORT = {line}\n\
                 ENABLE_UDP_LISTENER = False\nPICKLE_RECEIVER_INTERFACE = 127.0.0.1\n\
                 PICKLE_RECEIVER_PORT = {pickle}\nCACHE_QUERY_INTERFACE = 127.0.0.1\n\
                 CACHE_QUERY_PORT = {query}\nLOG_LISTENER_CONN_SUCCESS = False\n"
            ),
        )?;
        // One-second points kept for an hour: a test's writes are all visible.
        std::fs::write(
            dir.join("conf/storage-schemas.conf"),
            "[default]\npattern = .*\nretentions = 1s:1h\n",
        )?;
        std::fs::write(
            dir.join("py/serin_graphite_settings.py"),
            format!(
                "SECRET_KEY = 'serin-e2e'\nGRAPHITE_ROOT = '/usr/share/graphite-web'\n\
                 CONF_DIR = '{d}/conf'\nSTORAGE_DIR = '{d}/storage'\n\
                 WHISPER_DIR = '{d}/storage/whisper'\nLOG_DIR = '{d}/log'\n\
                 INDEX_FILE = '{d}/storage/index'\n\
                 STATIC_ROOT = '/usr/share/graphite-web/static'\n\
                 CARBONLINK_HOSTS = ['127.0.0.1:{query}']\n\
                 DATABASES = {{'default': {{'NAME': '{d}/storage/graphite.db', 'ENGINE': 'django.db.backends.sqlite3'}}}}\n\
                 LOG_ROTATION = False\nDEFAULT_XFILES_FACTOR = 0\nFUNCTION_PLUGINS = []\n"
            ),
        )?;
        let carbon = spawn(
            Command::new("carbon-cache")
                .arg(format!("--config={d}/conf/carbon.conf"))
                .args(["--debug", "start"]),
            &dir.join("carbon.out"),
        )?;
        let py = dir.join("py");
        let settings = |c: &mut Command| {
            c.env("PYTHONPATH", &py)
                .env("GRAPHITE_SETTINGS_MODULE", "serin_graphite_settings");
        };
        let mut migrate = Command::new("graphite-manage");
        migrate.args(["migrate", "--run-syncdb"]);
        settings(&mut migrate);
        let out = migrate
            .stdin(Stdio::null())
            .output()
            .await
            .context("graphite-manage migrate (installed by e2e/cluster.sh deps)")?;
        if !out.status.success() {
            bail!(
                "graphite-manage migrate failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let mut run = Command::new("graphite-manage");
        run.args(["runserver", &format!("127.0.0.1:{web}"), "--noreload"]);
        settings(&mut run);
        let web_child = spawn(&mut run, &dir.join("web.out"))?;
        let url = format!("http://127.0.0.1:{web}");
        wait_http(
            &format!("{url}/render?target=none&format=json"),
            "graphite-web",
            &dir.join("web.out"),
            Duration::from_secs(60),
        )
        .await?;
        let g = Graphite {
            url,
            line_port: line,
            _carbon: carbon,
            _web: web_child,
            dir,
        };
        // carbon-cache listens once its reactor runs.
        let deadline = Instant::now() + Duration::from_secs(30);
        while tokio::net::TcpStream::connect(("127.0.0.1", g.line_port))
            .await
            .is_err()
        {
            if Instant::now() > deadline {
                bail!(
                    "carbon-cache not listening; see {}",
                    g.dir.join("carbon.out").display()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Ok(g)
    }

    /// One point, now, through carbon's plaintext protocol.
    pub async fn send(&self, path: &str, value: f64) -> Result<()> {
        let now = chrono::Utc::now().timestamp();
        // One short line on loopback: a blocking write is simpler than an async one.
        use std::io::Write;
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.line_port))?;
        s.write_all(format!("{path} {value} {now}\n").as_bytes())?;
        Ok(())
    }
}

/// influxd 1.x with authentication on and one admin user.
pub struct InfluxDb {
    pub url: String,
    pub user: String,
    pub password: String,
    _influxd: Child,
}

impl InfluxDb {
    pub async fn start(state_dir: &Path, name: &str) -> Result<InfluxDb> {
        let dir = state_dir.join(format!("influxdb-{name}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let (http, rpc) = (free_port()?, free_port()?);
        let d = dir.display();
        std::fs::write(
            dir.join("influxdb.conf"),
            format!(
                "reporting-disabled = true\nbind-address = \"127.0.0.1:{rpc}\"\n\
                 [meta]\n  dir = \"{d}/meta\"\n[data]\n  dir = \"{d}/data\"\n  wal-dir = \"{d}/wal\"\n\
                 [http]\n  bind-address = \"127.0.0.1:{http}\"\n  auth-enabled = true\n  log-enabled = false\n"
            ),
        )?;
        let log = dir.join("influxd.out");
        let child = spawn(
            Command::new("influxd")
                .arg("-config")
                .arg(dir.join("influxdb.conf")),
            &log,
        )?;
        let url = format!("http://127.0.0.1:{http}");
        wait_http(
            &format!("{url}/ping"),
            "influxd",
            &log,
            Duration::from_secs(30),
        )
        .await?;
        let db = InfluxDb {
            url,
            user: "serin".into(),
            password: "e2e-influx-pw".into(),
            _influxd: child,
        };
        // With auth on, the first admin user may be created without credentials.
        db.statement(
            &format!(
                "CREATE USER {} WITH PASSWORD '{}' WITH ALL PRIVILEGES",
                db.user, db.password
            ),
            false,
        )
        .await?;
        db.statement("CREATE DATABASE serin", true).await?;
        Ok(db)
    }

    async fn statement(&self, q: &str, auth: bool) -> Result<()> {
        let http = reqwest::Client::builder().no_proxy().build()?;
        let mut req = http.post(format!("{}/query", self.url)).query(&[("q", q)]);
        if auth {
            req = req.basic_auth(&self.user, Some(&self.password));
        }
        let r = req.send().await?;
        let status = r.status();
        let body = r.text().await?;
        if !status.is_success() || body.contains("\"error\"") {
            bail!("influxdb {q}: HTTP {status}: {body}");
        }
        Ok(())
    }

    /// One point, now, in line protocol (`measurement,tag=v value=x`) to database
    /// `serin`.
    pub async fn write(&self, line: &str) -> Result<()> {
        let http = reqwest::Client::builder().no_proxy().build()?;
        let r = http
            .post(format!("{}/write?db=serin&precision=s", self.url))
            .basic_auth(&self.user, Some(&self.password))
            .body(format!("{line} {}", chrono::Utc::now().timestamp()))
            .send()
            .await?;
        if !r.status().is_success() {
            bail!("influxdb write: HTTP {}: {}", r.status(), r.text().await?);
        }
        Ok(())
    }
}
