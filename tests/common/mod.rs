//! Helpers for end-to-end tests that run the real `hindsight` binary as separate processes.
//!
//! Every wait is a condition polled against a deadline; nothing sleeps for a fixed time and
//! hopes.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use hindsight_primary::client::{Client, ConnectOptions};

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_hindsight");

/// How long anything may take before a test gives up: generous, because CI machines are slow
/// and a debug build recovers slowly.
pub const DEADLINE: Duration = Duration::from_secs(60);

/// How often conditions are polled.
pub const POLL_INTERVAL: Duration = Duration::from_millis(10);

/// Polls `condition` until it holds or [`DEADLINE`] passes.
pub fn wait_until(what: &str, mut condition: impl FnMut() -> anyhow::Result<bool>) -> anyhow::Result<()> {
    let deadline = Instant::now() + DEADLINE;
    loop {
        if condition()? {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("timed out after {} s waiting for {what}", DEADLINE.as_secs());
        }
        std::thread::sleep(POLL_INTERVAL);
    }
}

/// Writes a configuration file `name` in `dir` and returns its path as text (for `--config`).
pub fn write_config(dir: &Path, name: &str, toml: &str) -> anyhow::Result<String> {
    let path = dir.join(name);
    std::fs::write(&path, toml).with_context(|| format!("write {}", path.display()))?;
    Ok(path.to_str().context("a UTF-8 temporary path")?.to_string())
}

/// Waits for a process to exit, with a deadline.
pub fn wait_exit(child: &mut Child, what: &str) -> anyhow::Result<ExitStatus> {
    let mut status = None;
    wait_until(what, || {
        status = child.try_wait().context("wait for the process")?;
        Ok(status.is_some())
    })?;
    status.context("no exit status")
}

/// A server process (primary or replica) and its log; killed when dropped. [`Primary`] and
/// [`Replica`] dereference to it for the signals and the log.
pub struct ServerProcess {
    child: Child,
    log_path: PathBuf,
    /// "the primary" or "the replica", for messages.
    what: &'static str,
}

impl ServerProcess {
    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM and waits for the exit.
    pub fn terminate(&mut self) -> anyhow::Result<ExitStatus> {
        signal(self.child.id(), libc::SIGTERM)?;
        wait_exit(&mut self.child, &format!("{} to exit after SIGTERM", self.what))
    }

    /// Sends SIGKILL and reaps the process.
    pub fn kill9(&mut self) -> anyhow::Result<()> {
        signal(self.child.id(), libc::SIGKILL)?;
        wait_exit(&mut self.child, &format!("{} to die of SIGKILL", self.what))?;
        Ok(())
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// The log so far.
    pub fn log(&self) -> String {
        read_log(&self.log_path)
    }

    /// The `THP_enabled` field of the process's `/proc/PID/status` ("0" when transparent huge
    /// pages are forbidden for it); `None` on a kernel without the field (before 5.0).
    pub fn thp_enabled(&self) -> anyhow::Result<Option<String>> {
        let path = format!("/proc/{}/status", self.pid());
        let status = std::fs::read_to_string(&path).with_context(|| format!("read {path}"))?;
        Ok(status.lines().find_map(|l| l.strip_prefix("THP_enabled:")).map(|v| v.trim().to_string()))
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        if self.is_running() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A `hindsight primary` process; killed when dropped.
pub struct Primary {
    process: ServerProcess,
    /// The address from the ready line.
    pub addr: String,
    /// The system id from the ready line.
    pub system_id: u64,
    /// The data directory.
    pub data: PathBuf,
    /// Where its stderr (the log) goes.
    pub log_path: PathBuf,
}

impl Primary {
    /// Starts a primary on `data` listening on a free port, and waits for its ready line.
    pub fn start(data: &Path) -> anyhow::Result<Primary> {
        Primary::start_with(data, &[])
    }

    /// Starts a primary with extra arguments (e.g. `--config FILE`).
    pub fn start_with(data: &Path, extra: &[&str]) -> anyhow::Result<Primary> {
        Primary::start_on(data, "127.0.0.1:0", extra)
    }

    /// Starts a primary listening on `listen` (e.g. the address an earlier run got, to restart
    /// it where its replicas look for it).
    pub fn start_on(data: &Path, listen: &str, extra: &[&str]) -> anyhow::Result<Primary> {
        let log_path = log_path_for(data);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .context("open the primary's log file")?;
        let mut child = Command::new(BIN)
            .arg("primary")
            .arg("--data")
            .arg(data)
            .args(["--listen", listen])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .context("spawn hindsight primary")?;
        let stdout = child.stdout.take().context("take the primary's stdout")?;
        let (tx, rx) = mpsc::sync_channel(4);
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(line)) = lines.next() {
                let _ = tx.send(line);
            }
            // Anything more on stdout breaks the "exactly one line" promise.
            for line in lines.map_while(Result::ok) {
                eprintln!("unexpected stdout line from the primary: {line}");
            }
        });
        let line = match rx.recv_timeout(DEADLINE) {
            Ok(line) => line,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                bail!("the primary printed no ready line; its log:\n{}", read_log(&log_path));
            }
        };
        let (addr, system_id) = parse_ready_line(&line, data)?;
        let process = ServerProcess { child, log_path: log_path.clone(), what: "the primary" };
        Ok(Primary { process, addr, system_id, data: data.to_path_buf(), log_path })
    }

    /// The admin secret the primary wrote to `DATA/admin.secret`.
    pub fn password(&self) -> String {
        std::fs::read_to_string(self.data.join("admin.secret")).unwrap_or_default().trim().to_string()
    }

    /// Connect options for the admin role.
    pub fn admin(&self) -> ConnectOptions {
        ConnectOptions { password: self.password(), ..ConnectOptions::default() }
    }

    /// A client logged in as admin.
    pub async fn connect(&self) -> anyhow::Result<Client> {
        Client::connect(self.addr.as_str(), self.admin()).await.context("connect to the primary as admin")
    }

    /// Runs `hindsight shell ADDR ARGS…` with the admin password in the environment.
    pub fn shell(&self, args: &[&str]) -> anyhow::Result<Output> {
        self.shell_with_input(args, None)
    }

    /// Runs the shell with `input` on its stdin.
    pub fn shell_with_input(&self, args: &[&str], input: Option<&str>) -> anyhow::Result<Output> {
        run_shell(&self.addr, &self.password(), args, input)
    }
}

impl std::ops::Deref for Primary {
    type Target = ServerProcess;

    fn deref(&self) -> &ServerProcess {
        &self.process
    }
}

impl std::ops::DerefMut for Primary {
    fn deref_mut(&mut self) -> &mut ServerProcess {
        &mut self.process
    }
}

/// How many times a server is started on a fixed address while that address is still taken
/// (by the process it replaces, or by a connection that happened to get the port).
pub const BIND_ATTEMPTS: u32 = 10;

impl Primary {
    /// Restarts a primary on `listen`, the address its earlier run got, so that replicas
    /// following that address reconnect. A bind failure is retried [`BIND_ATTEMPTS`] times.
    pub fn restart_on(data: &Path, listen: &str, extra: &[&str]) -> anyhow::Result<Primary> {
        retry_bind(&log_path_for(data), "the primary", || Primary::start_on(data, listen, extra))
    }
}

/// Runs `start` until it succeeds, retrying while the server's new log lines say its address
/// is in use.
pub fn retry_bind<T>(
    log_path: &Path,
    what: &str,
    mut start: impl FnMut() -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let mut attempt = 1;
    loop {
        let log_before = std::fs::metadata(log_path).map(|m| m.len()).unwrap_or(0);
        match start() {
            Ok(server) => return Ok(server),
            Err(e) => {
                let new_lines = read_log(log_path).get(log_before as usize..).unwrap_or_default().to_string();
                if attempt < BIND_ATTEMPTS && new_lines.contains("Address already in use") {
                    eprintln!("{what}: address still in use (attempt {attempt}); retrying");
                    std::thread::sleep(POLL_INTERVAL * 10 * attempt);
                    attempt += 1;
                    continue;
                }
                return Err(e).with_context(|| format!("restart {what} (attempt {attempt})"));
            }
        }
    }
}

/// A `hindsight replica` process; killed when dropped.
pub struct Replica {
    process: ServerProcess,
    /// The address from the ready line.
    pub addr: String,
    /// The system id from the ready line.
    pub system_id: u64,
    /// The data directory.
    pub data: PathBuf,
    /// Where its stderr (the log) goes.
    pub log_path: PathBuf,
    /// The upstream it follows (`--primary`).
    pub upstream: String,
    /// Its `--name`.
    pub name: String,
    /// The password it logs in upstream with; it accepts the same for its own sessions.
    password: String,
}

impl Replica {
    /// Starts a replica of `upstream` on `data` (empty: bootstrap; a replica's: resume)
    /// listening on a free port, logging in with the password in `password_file`, and waits
    /// for its ready line. `extra` are more arguments (`--slot S`, `--config FILE`).
    pub fn start(
        data: &Path,
        upstream: &str,
        password_file: &Path,
        name: &str,
        extra: &[&str],
    ) -> anyhow::Result<Replica> {
        Replica::start_on(data, "127.0.0.1:0", upstream, password_file, name, extra)
    }

    /// Starts a replica listening on `listen`.
    pub fn start_on(
        data: &Path,
        listen: &str,
        upstream: &str,
        password_file: &Path,
        name: &str,
        extra: &[&str],
    ) -> anyhow::Result<Replica> {
        let password = std::fs::read_to_string(password_file)
            .with_context(|| format!("read the password file {}", password_file.display()))?
            .trim()
            .to_string();
        let log_path = log_path_for(data);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .context("open the replica's log file")?;
        let mut child = Command::new(BIN)
            .arg("replica")
            .arg("--data")
            .arg(data)
            .args(["--primary", upstream, "--listen", listen])
            .arg("--password-file")
            .arg(password_file)
            .args(["--name", name])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .context("spawn hindsight replica")?;
        let line = match first_stdout_line(&mut child, "replica") {
            Some(line) => line,
            None => {
                let _ = child.kill();
                let _ = child.wait();
                bail!("the replica {name} printed no ready line; its log:\n{}", read_log(&log_path));
            }
        };
        let ready = hindsight_primary::ready::ReadyLine::parse(&line)
            .with_context(|| format!("unexpected ready line {line:?}"))?;
        anyhow::ensure!(
            ready.role == "replica",
            "a replica's ready line names role {:?}: {line:?}",
            ready.role
        );
        anyhow::ensure!(
            ready.data == data.display().to_string(),
            "ready line names another directory: {line:?}"
        );
        Ok(Replica {
            process: ServerProcess { child, log_path: log_path.clone(), what: "the replica" },
            addr: ready.addr,
            system_id: ready.system_id,
            data: data.to_path_buf(),
            log_path,
            upstream: upstream.to_string(),
            name: name.to_string(),
            password,
        })
    }

    /// Restarts a replica on `listen`, the address its earlier run got (a cascaded replica
    /// follows that address). A bind failure is retried [`BIND_ATTEMPTS`] times.
    pub fn restart_on(
        data: &Path,
        listen: &str,
        upstream: &str,
        password_file: &Path,
        name: &str,
        extra: &[&str],
    ) -> anyhow::Result<Replica> {
        retry_bind(&log_path_for(data), &format!("the replica {name}"), || {
            Replica::start_on(data, listen, upstream, password_file, name, extra)
        })
    }

    /// The password its sessions log in with (the primary's admin secret).
    pub fn password(&self) -> String {
        self.password.clone()
    }

    /// Connect options for the admin role.
    pub fn admin(&self) -> ConnectOptions {
        ConnectOptions { password: self.password(), ..ConnectOptions::default() }
    }

    /// A client logged in as admin.
    pub async fn connect(&self) -> anyhow::Result<Client> {
        Client::connect(self.addr.as_str(), self.admin())
            .await
            .with_context(|| format!("connect to the replica {} as admin", self.name))
    }
}

impl std::ops::Deref for Replica {
    type Target = ServerProcess;

    fn deref(&self) -> &ServerProcess {
        &self.process
    }
}

impl std::ops::DerefMut for Replica {
    fn deref_mut(&mut self) -> &mut ServerProcess {
        &mut self.process
    }
}

/// The first line `child` prints on stdout, within [`DEADLINE`]; `None` when it exits (or
/// closes stdout) first or the deadline passes. Later lines are reported as unexpected.
fn first_stdout_line(child: &mut Child, what: &'static str) -> Option<String> {
    let stdout = child.stdout.take()?;
    let (tx, rx) = mpsc::sync_channel(4);
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        if let Some(Ok(line)) = lines.next() {
            let _ = tx.send(line);
        }
        for line in lines.map_while(Result::ok) {
            eprintln!("unexpected stdout line from the {what}: {line}");
        }
    });
    rx.recv_timeout(DEADLINE).ok()
}

/// `SHOW STATUS` as (name, value) pairs, values as text.
pub async fn show_status(client: &mut Client) -> anyhow::Result<std::collections::BTreeMap<String, String>> {
    let results = client.query("SHOW STATUS").await.context("SHOW STATUS")?;
    let result = results.first().context("SHOW STATUS returned no result")?;
    Ok(result.rows.iter().map(|row| (row[0].to_string(), row[1].to_string())).collect())
}

/// A one-row `SHOW …` (RECOVERY) as column name → value.
pub async fn show_one_row(
    client: &mut Client,
    sql: &str,
) -> anyhow::Result<std::collections::BTreeMap<String, hindsight_primary::client::Value>> {
    let results = client.query(sql).await.with_context(|| format!("run {sql}"))?;
    let result = results.first().with_context(|| format!("{sql} returned no result"))?;
    anyhow::ensure!(result.rows.len() == 1, "{sql} returned {} rows: {:?}", result.rows.len(), result.rows);
    Ok(result.columns.iter().map(|c| c.name.clone()).zip(result.rows[0].iter().cloned()).collect())
}

/// The log file next to a data directory.
pub fn log_path_for(data: &Path) -> PathBuf {
    let name = data.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "data".into());
    data.with_file_name(format!("{name}.log"))
}

fn read_log(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| format!("(no log: {e})"))
}

fn signal(pid: u32, signal: libc::c_int) -> anyhow::Result<()> {
    let pid = libc::pid_t::try_from(pid).context("pid out of range")?;
    // SAFETY: kill(2) on a child this test started and has not reaped.
    if unsafe { libc::kill(pid, signal) } != 0 {
        return Err(std::io::Error::last_os_error()).context("send a signal to the primary");
    }
    Ok(())
}

/// Parses the primary's ready line and checks it names `data`.
pub fn parse_ready_line(line: &str, data: &Path) -> anyhow::Result<(String, u64)> {
    let ready = hindsight_primary::ready::ReadyLine::parse(line)
        .with_context(|| format!("unexpected ready line {line:?}"))?;
    anyhow::ensure!(ready.data == data.display().to_string(), "ready line names another directory: {line:?}");
    Ok((ready.addr, ready.system_id))
}

/// Runs `hindsight shell ADDR ARGS…` with `password` in `HINDSIGHT_PASSWORD`, with a deadline.
pub fn run_shell(addr: &str, password: &str, args: &[&str], input: Option<&str>) -> anyhow::Result<Output> {
    use std::io::Write;
    let mut child = Command::new(BIN)
        .arg("shell")
        .arg(addr)
        .args(args)
        .env("HINDSIGHT_PASSWORD", password)
        .env_remove("RUST_LOG")
        .stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("spawn hindsight shell")?;
    let stdout = child.stdout.take().context("take stdout")?;
    let stderr = child.stderr.take().context("take stderr")?;
    let out = std::thread::spawn(move || std::io::read_to_string(stdout).unwrap_or_default());
    let err = std::thread::spawn(move || std::io::read_to_string(stderr).unwrap_or_default());
    if let Some(input) = input {
        // Dropped at the end of this block: the shell sees end of input.
        let mut stdin = child.stdin.take().context("take the shell's stdin")?;
        stdin.write_all(input.as_bytes()).context("write the shell's input")?;
    }
    let status = wait_exit(&mut child, "the shell to exit")?;
    let stdout = out.join().unwrap_or_default().into_bytes();
    let stderr = err.join().unwrap_or_default().into_bytes();
    Ok(Output { status, stdout, stderr })
}

/// Runs `hindsight ARGS…` to completion with a deadline (for commands that should exit).
pub fn run_bin(args: &[&str]) -> anyhow::Result<Output> {
    let mut child = Command::new(BIN)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("spawn hindsight")?;
    let stdout = child.stdout.take().context("take stdout")?;
    let stderr = child.stderr.take().context("take stderr")?;
    let out = std::thread::spawn(move || std::io::read_to_string(stdout).unwrap_or_default());
    let err = std::thread::spawn(move || std::io::read_to_string(stderr).unwrap_or_default());
    let status = wait_exit(&mut child, "hindsight to exit")?;
    Ok(Output {
        status,
        stdout: out.join().unwrap_or_default().into_bytes(),
        stderr: err.join().unwrap_or_default().into_bytes(),
    })
}

/// stdout of an output as text.
pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// stderr of an output as text.
pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}
