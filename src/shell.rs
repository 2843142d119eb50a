//! `hindsight shell`: the operator's SQL shell.
//!
//! Statements come from `-c` (each one sent as it is, possibly several statements), `-f FILE`,
//! or standard input: with line editing, history and prompts when it is a terminal, read
//! silently when it is a pipe or a file. Input is cut into statements at each `;` outside
//! quotes and comments ([`StatementBuffer`]), and each statement is sent on its own.
//!
//! Results print as aligned tables, CSV or JSON lines ([`crate::render`]), errors to stderr as
//! `ERROR: message (code)` with the line and a caret when the server gives a position.
//!
//! Exit status (like psql with `ON_ERROR_STOP=1`): 0 when everything ran, 1 for a problem of
//! the shell itself (an unreadable file, a bad flag), 2 when the server could not be reached or
//! the connection was lost, 3 when a statement from `-c`, `-f` or a non-terminal stdin failed —
//! the shell stops at the first such failure. Interactively, failures are printed and the shell
//! goes on.

use std::io::{self, BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use hindsight_primary::client::{Client, ClientError, ConnectOptions, QueryResult, Response};
use rustyline::config::Configurer;
use rustyline::error::ReadlineError;

use crate::render::{render, render_error, Format};

/// The address the shell connects to when none is given.
pub const ADDR_DEFAULT: &str = "127.0.0.1:7340";

/// The history file's name, in `$HOME`.
pub const HISTORY_FILE: &str = ".hindsight_history";

/// The most entries kept in the history file.
pub const HISTORY_ENTRIES_MAX: usize = 2_000;

/// The longest password file read, in bytes.
pub const PASSWORD_FILE_LEN_MAX: u64 = 4096;

/// The environment variable holding the password when `--password-file` is not given.
pub const PASSWORD_ENV: &str = "HINDSIGHT_PASSWORD";

/// Exit status: a problem of the shell itself.
pub const EXIT_FAILURE: u8 = 1;
/// Exit status: the server could not be reached, or the connection was lost.
pub const EXIT_CONNECTION: u8 = 2;
/// Exit status: a statement failed (from `-c`, `-f` or non-terminal stdin).
pub const EXIT_STATEMENT_FAILED: u8 = 3;

const EXAMPLES: &str = "\
Examples:
  hindsight shell --password-file /var/lib/hindsight/admin.secret
  hindsight shell 10.0.0.5:7340 -c 'SELECT count(*) FROM accounts'
  hindsight shell -c 'SHOW STATUS' --format json
  hindsight shell -f schema.sql
  echo 'SELECT 1;' | HINDSIGHT_PASSWORD=secret hindsight shell --format csv

Exit status: 0 when everything ran; 1 for a problem of the shell itself; 2 when the server could
not be reached or the connection was lost; 3 when a statement from -c, -f or piped input failed
(the shell stops at the first failure, like psql -v ON_ERROR_STOP=1).";

/// The shell's command line.
#[derive(Debug, clap::Args)]
#[command(after_help = EXAMPLES)]
pub struct ShellArgs {
    /// The server's address, host:port.
    #[arg(default_value = ADDR_DEFAULT)]
    pub addr: String,
    /// Run this SQL (one or more statements) and exit; may be repeated, runs in order.
    #[arg(short = 'c', long = "command", value_name = "SQL")]
    pub commands: Vec<String>,
    /// Run the statements in FILE and exit (`-` for standard input); runs after any -c.
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    pub file: Option<PathBuf>,
    /// How to print results.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    /// The role to log in as: admin, replication or readonly.
    #[arg(long, default_value = "admin")]
    pub role: String,
    /// Read the password from FILE (e.g. DATA_DIR/admin.secret); otherwise it comes from the
    /// HINDSIGHT_PASSWORD environment variable.
    #[arg(long, value_name = "FILE")]
    pub password_file: Option<PathBuf>,
}

/// Runs the shell; prints its own errors.
pub fn run(args: ShellArgs) -> ExitCode {
    match run_inner(args) {
        Ok(code) => ExitCode::from(code),
        Err(failure) => {
            eprintln!("hindsight shell: {}", failure.message);
            ExitCode::from(failure.code)
        }
    }
}

/// A failure that ends the shell: what to print and the exit status.
struct Failure {
    message: String,
    code: u8,
}

impl Failure {
    fn shell(message: impl Into<String>) -> Failure {
        Failure { message: message.into(), code: EXIT_FAILURE }
    }
}

fn run_inner(args: ShellArgs) -> Result<u8, Failure> {
    let password = read_password(&args)?;
    let password_given = !password.is_empty();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::shell(format!("could not start the async runtime: {e}")))?;
    let options = ConnectOptions {
        role: args.role.clone(),
        password,
        expected_system_id: 0,
        application_name: "hindsight shell".to_string(),
    };
    let mut shell = Shell::connect(runtime, &args.addr, options, args.format).map_err(|e| {
        let mut message = connect_failure(&args.addr, &e);
        if e.code() == Some("invalid_password") && !password_given {
            message.push_str(&format!(
                " (no password was given: use --password-file DATA_DIR/admin.secret or set {PASSWORD_ENV})"
            ));
        }
        Failure { message, code: EXIT_CONNECTION }
    })?;

    let scripted = !args.commands.is_empty() || args.file.is_some();
    for command in &args.commands {
        match shell.run_input(command) {
            Outcome::Ok => {}
            Outcome::Quit => return Ok(0),
            failed => return Ok(failed.exit_code()),
        }
    }
    if let Some(path) = &args.file {
        let outcome = if path.as_os_str() == "-" {
            shell.run_lines(io::stdin().lock())
        } else {
            let file = std::fs::File::open(path)
                .map_err(|e| Failure::shell(format!("could not read {}: {e}", path.display())))?;
            shell.run_lines(io::BufReader::new(file))
        };
        return Ok(outcome.exit_code());
    }
    if scripted {
        shell.close();
        return Ok(0);
    }
    let code = if io::stdin().is_terminal() {
        shell.interactive(&args.addr)
    } else {
        shell.run_lines(io::stdin().lock()).exit_code()
    };
    shell.close();
    Ok(code)
}

fn connect_failure(addr: &str, error: &ClientError) -> String {
    match error {
        ClientError::Connect { .. } => error.to_string(),
        ClientError::Server { .. } => format!("could not log in to {addr}: {error}"),
        _ => format!("could not connect to {addr}: {error}"),
    }
}

fn read_password(args: &ShellArgs) -> Result<String, Failure> {
    if let Some(path) = &args.password_file {
        let metadata = std::fs::metadata(path)
            .map_err(|e| Failure::shell(format!("could not read {}: {e}", path.display())))?;
        if metadata.len() > PASSWORD_FILE_LEN_MAX {
            return Err(Failure::shell(format!(
                "{} is longer than {PASSWORD_FILE_LEN_MAX} bytes: not a password file",
                path.display()
            )));
        }
        let text = std::fs::read_to_string(path)
            .map_err(|e| Failure::shell(format!("could not read {}: {e}", path.display())))?;
        return Ok(text.trim().to_string());
    }
    Ok(std::env::var(PASSWORD_ENV).unwrap_or_default())
}

/// How running some input ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Everything ran.
    Ok,
    /// A statement failed (already printed).
    Failed,
    /// The connection is gone (already printed).
    ConnectionLost,
    /// `\q`.
    Quit,
}

impl Outcome {
    fn exit_code(self) -> u8 {
        match self {
            Outcome::Ok | Outcome::Quit => 0,
            Outcome::Failed => EXIT_STATEMENT_FAILED,
            Outcome::ConnectionLost => EXIT_CONNECTION,
        }
    }
}

/// A connected shell: runs statements and prints their results to stdout, errors to stderr.
pub struct Shell {
    runtime: tokio::runtime::Runtime,
    client: Option<Client>,
    format: Format,
    timing: bool,
}

impl Shell {
    /// Connects and logs in. `runtime` runs the client; a current-thread runtime is enough.
    pub fn connect(
        runtime: tokio::runtime::Runtime,
        addr: &str,
        options: ConnectOptions,
        format: Format,
    ) -> Result<Shell, ClientError> {
        let client = runtime.block_on(Client::connect(addr, options))?;
        Ok(Shell { runtime, client: Some(client), format, timing: false })
    }

    /// The prompt for the first line of a statement, showing the transaction state.
    pub fn prompt(&self) -> &'static str {
        match &self.client {
            Some(client) if client.transaction_failed() => "hindsight!> ",
            Some(client) if client.in_transaction() => "hindsight*> ",
            _ => "hindsight=> ",
        }
    }

    /// Runs one piece of input as given: a backslash command, or SQL sent as one query.
    pub fn run_input(&mut self, input: &str) -> Outcome {
        let trimmed = input.trim_start();
        if trimmed.starts_with('\\') {
            return self.backslash(trimmed.trim_end());
        }
        self.run_sql(input)
    }

    /// Sends `sql` as one query and prints what comes back.
    pub fn run_sql(&mut self, sql: &str) -> Outcome {
        let Some(client) = self.client.as_mut() else {
            eprintln!("hindsight shell: not connected");
            return Outcome::ConnectionLost;
        };
        let started = Instant::now();
        let answer: Result<Response, ClientError> = self.runtime.block_on(client.execute(sql));
        let elapsed = started.elapsed();
        let mut stdout = io::stdout().lock();
        match answer {
            Ok(response) => {
                for result in &response.results {
                    let _ = stdout.write_all(render(result, self.format).as_bytes());
                }
                if self.timing {
                    let _ = writeln!(stdout, "Time: {:.3} ms", elapsed.as_secs_f64() * 1000.0);
                }
                let _ = stdout.flush();
                match response.error {
                    None => Outcome::Ok,
                    Some(error) => {
                        eprint!("{}", render_error(&error, sql));
                        Outcome::Failed
                    }
                }
            }
            Err(ClientError::Server { code, message, hint, position }) => {
                // The server said why and closed the connection (e.g. shutting_down).
                let _ = stdout.flush();
                let error = hindsight_primary::client::ServerError { code, message, hint, position };
                eprint!("{}", render_error(&error, sql));
                eprintln!("hindsight shell: the server closed the connection");
                self.client = None;
                Outcome::ConnectionLost
            }
            Err(e) => {
                let _ = stdout.flush();
                eprintln!("hindsight shell: connection to the server lost: {e}");
                self.client = None;
                Outcome::ConnectionLost
            }
        }
    }

    /// Reads statements from `input` without prompts and runs each; stops at the first
    /// failure.
    pub fn run_lines(&mut self, input: impl BufRead) -> Outcome {
        let mut buffer = StatementBuffer::new();
        for line in input.lines() {
            let line = match line {
                Ok(line) => line,
                Err(e) => {
                    eprintln!("hindsight shell: could not read the input: {e}");
                    return Outcome::Failed;
                }
            };
            if buffer.is_empty() && line.trim_start().starts_with('\\') {
                match self.run_input(&line) {
                    Outcome::Ok => continue,
                    other => return other,
                }
            }
            buffer.push_line(&line);
            for statement in buffer.take_complete() {
                match self.run_sql(&statement) {
                    Outcome::Ok => {}
                    other => return other,
                }
            }
        }
        match buffer.take_rest() {
            Some(statement) => self.run_sql(&statement),
            None => Outcome::Ok,
        }
    }

    /// The interactive loop: prompts, line editing, history. Returns the exit status.
    fn interactive(&mut self, addr: &str) -> u8 {
        let mut editor = match rustyline::DefaultEditor::new() {
            Ok(editor) => editor,
            Err(e) => {
                eprintln!("hindsight shell: could not set up line editing: {e}");
                return EXIT_FAILURE;
            }
        };
        let _ = editor.set_max_history_size(HISTORY_ENTRIES_MAX);
        let history = std::env::var_os("HOME").map(|home| PathBuf::from(home).join(HISTORY_FILE));
        if let Some(path) = &history {
            // A missing history file is the normal first run.
            let _ = editor.load_history(path);
        }
        if let Some(client) = &self.client {
            println!(
                "{} shell, connected to {addr} ({}, system id {:016X}, role {}).\nType \\? for help, \\q to quit.",
                hindsight_primary::SERVER_VERSION,
                client.server_version(),
                client.system_id(),
                client.role()
            );
        }
        let mut buffer = StatementBuffer::new();
        let code = loop {
            let prompt = if buffer.is_empty() { self.prompt() } else { "hindsight-> " };
            match editor.readline(prompt) {
                Ok(line) => {
                    if buffer.is_empty() && line.trim_start().starts_with('\\') {
                        let _ = editor.add_history_entry(line.trim());
                        match self.run_input(&line) {
                            Outcome::Quit => break 0,
                            Outcome::ConnectionLost => break EXIT_CONNECTION,
                            Outcome::Ok | Outcome::Failed => continue,
                        }
                    }
                    buffer.push_line(&line);
                    let mut lost = false;
                    for statement in buffer.take_complete() {
                        let _ = editor.add_history_entry(statement.as_str());
                        if self.run_sql(&statement) == Outcome::ConnectionLost {
                            lost = true;
                            break;
                        }
                    }
                    if lost {
                        break EXIT_CONNECTION;
                    }
                }
                // Ctrl-C drops the statement being typed, as in psql.
                Err(ReadlineError::Interrupted) => buffer = StatementBuffer::new(),
                Err(ReadlineError::Eof) => {
                    if let Some(statement) = buffer.take_rest() {
                        if self.run_sql(&statement) == Outcome::ConnectionLost {
                            break EXIT_CONNECTION;
                        }
                    }
                    break 0;
                }
                Err(e) => {
                    eprintln!("hindsight shell: could not read the input: {e}");
                    break EXIT_FAILURE;
                }
            }
        };
        if let Some(path) = &history {
            if let Err(e) = editor.save_history(path) {
                eprintln!("hindsight shell: could not save the history to {}: {e}", path.display());
            }
        }
        code
    }

    /// A backslash command: `\q`, `\?`, `\timing [on|off]`, `\format table|csv|json`.
    fn backslash(&mut self, line: &str) -> Outcome {
        let mut words = line.split_whitespace();
        let command = words.next().unwrap_or("");
        let argument = words.next();
        match (command, argument) {
            ("\\q", None) => Outcome::Quit,
            ("\\?", None) => {
                print!("{}", HELP);
                Outcome::Ok
            }
            ("\\timing", argument) => {
                self.timing = match argument {
                    None => !self.timing,
                    Some("on") => true,
                    Some("off") => false,
                    Some(other) => {
                        eprintln!("\\timing: expected on or off, not \"{other}\"");
                        return Outcome::Failed;
                    }
                };
                println!("Timing is {}.", if self.timing { "on" } else { "off" });
                Outcome::Ok
            }
            ("\\format", Some(name)) => {
                self.format = match name {
                    "table" => Format::Table,
                    "csv" => Format::Csv,
                    "json" => Format::Json,
                    other => {
                        eprintln!("\\format: expected table, csv or json, not \"{other}\"");
                        return Outcome::Failed;
                    }
                };
                println!("Output format is {name}.");
                Outcome::Ok
            }
            _ => {
                eprintln!("invalid command {line}; try \\? for help");
                Outcome::Failed
            }
        }
    }

    /// Runs one query without printing and returns its results (for scripted checks such as
    /// the demo's).
    pub fn query(&mut self, sql: &str) -> Result<Vec<QueryResult>, ClientError> {
        let client = self.client.as_mut().ok_or(ClientError::Closed)?;
        self.runtime.block_on(client.query(sql))
    }

    /// Runs one query without printing and returns the first column of its first row as an
    /// integer.
    pub fn query_i64(&mut self, sql: &str) -> anyhow::Result<i64> {
        let results = self.query(sql).map_err(|e| anyhow::anyhow!("{e}"))?;
        results
            .iter()
            .rev()
            .find_map(|r| r.rows.first().and_then(|row| row.first()).and_then(|v| v.as_i64()))
            .ok_or_else(|| anyhow::anyhow!("{sql} returned no integer"))
    }

    /// Says goodbye to the server.
    pub fn close(&mut self) {
        if let Some(client) = self.client.take() {
            self.runtime.block_on(client.close());
        }
    }
}

const HELP: &str = "\
  \\q                      quit
  \\?                      this help
  \\timing [on|off]        show how long each statement took (toggles without an argument)
  \\format table|csv|json  how to print results
Statements end with ';' (outside quotes) and may span lines. Ctrl-C clears the statement being
typed; Ctrl-D quits. The prompt shows the transaction state: => idle, *> inside BEGIN,
!> in a failed transaction (only ROLLBACK is accepted), -> continuing a statement.
";

/// Cuts SQL text, fed line by line, into statements at each `;` that is outside quotes and
/// comments. `--` comments are left out of the statements (as psql does); `/* */` comments
/// stay in.
///
/// Invariants: `current` holds the text after the last complete statement; `state` is the
/// lexical state at its end; `has_content` says whether `current` holds anything but
/// whitespace and comments.
#[derive(Debug, Default)]
pub struct StatementBuffer {
    current: String,
    state: Lex,
    has_content: bool,
    complete: Vec<String>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Lex {
    #[default]
    Normal,
    /// Inside '…' (a doubled '' leaves and re-enters, which is what it means).
    SingleQuote,
    /// Inside "…".
    DoubleQuote,
    /// Inside `/* … */`.
    BlockComment,
}

impl StatementBuffer {
    /// An empty buffer.
    pub fn new() -> StatementBuffer {
        StatementBuffer::default()
    }

    /// Whether nothing but whitespace and comments is buffered (so the next line starts a new
    /// statement).
    pub fn is_empty(&self) -> bool {
        !self.has_content && self.state == Lex::Normal
    }

    /// Appends a line (without its line break).
    pub fn push_line(&mut self, line: &str) {
        let mut chars = line.chars().peekable();
        while let Some(c) = chars.next() {
            match self.state {
                Lex::Normal => match c {
                    '-' if chars.peek() == Some(&'-') => break,
                    '/' if chars.peek() == Some(&'*') => {
                        chars.next();
                        self.current.push_str("/*");
                        self.state = Lex::BlockComment;
                        continue;
                    }
                    ';' => {
                        self.current.push(';');
                        if self.has_content {
                            self.complete.push(self.current.trim().to_string());
                        }
                        self.current.clear();
                        self.has_content = false;
                        continue;
                    }
                    '\'' => self.state = Lex::SingleQuote,
                    '"' => self.state = Lex::DoubleQuote,
                    _ => {}
                },
                Lex::SingleQuote if c == '\'' => self.state = Lex::Normal,
                Lex::DoubleQuote if c == '"' => self.state = Lex::Normal,
                Lex::BlockComment => {
                    if c == '*' && chars.peek() == Some(&'/') {
                        chars.next();
                        self.current.push_str("*/");
                        self.state = Lex::Normal;
                    } else {
                        self.current.push(c);
                    }
                    continue;
                }
                Lex::SingleQuote | Lex::DoubleQuote => {}
            }
            self.has_content |= !c.is_whitespace();
            self.current.push(c);
        }
        self.current.push('\n');
    }

    /// Takes every complete statement (each ending with its `;`), in order.
    pub fn take_complete(&mut self) -> Vec<String> {
        std::mem::take(&mut self.complete)
    }

    /// Takes what is left (a statement without its final `;`), if it has any content.
    pub fn take_rest(&mut self) -> Option<String> {
        let rest = std::mem::take(&mut self.current);
        let has_content = self.has_content;
        *self = StatementBuffer::new();
        has_content.then(|| rest.trim().to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(lines: &[&str]) -> (Vec<String>, Option<String>) {
        let mut buffer = StatementBuffer::new();
        let mut statements = Vec::new();
        for line in lines {
            buffer.push_line(line);
            statements.extend(buffer.take_complete());
        }
        (statements, buffer.take_rest())
    }

    #[test]
    fn statements_end_at_semicolons() {
        let (statements, rest) = split(&["SELECT 1; SELECT 2;", "SELECT", "  3;", "SELECT 4"]);
        assert_eq!(statements, ["SELECT 1;", "SELECT 2;", "SELECT\n  3;"]);
        assert_eq!(rest.as_deref(), Some("SELECT 4"));
    }

    #[test]
    fn quotes_and_comments_hide_semicolons() {
        let (statements, rest) = split(&[
            "INSERT INTO t VALUES (1, 'a;b'), (2, 'it''s; fine');",
            "SELECT \"odd;name\" FROM t; -- a comment; with a semicolon",
            "SELECT /* ; */ 1;",
            "INSERT INTO t VALUES (3, 'multi",
            "line; text');",
        ]);
        assert_eq!(
            statements,
            [
                "INSERT INTO t VALUES (1, 'a;b'), (2, 'it''s; fine');",
                "SELECT \"odd;name\" FROM t;",
                "SELECT /* ; */ 1;",
                "INSERT INTO t VALUES (3, 'multi\nline; text');",
            ]
        );
        assert_eq!(rest, None);
    }

    #[test]
    fn empty_statements_and_comments_are_skipped() {
        let (statements, rest) = split(&[";", "  ;;", "-- only a comment", "/* and", "another */"]);
        assert!(statements.is_empty(), "{statements:?}");
        assert_eq!(rest, None);
    }

    #[test]
    fn emptiness_tracks_open_quotes() {
        let mut buffer = StatementBuffer::new();
        assert!(buffer.is_empty());
        buffer.push_line("SELECT 'open");
        assert!(buffer.take_complete().is_empty());
        assert!(!buffer.is_empty());
        buffer.push_line("';");
        assert_eq!(buffer.take_complete(), ["SELECT 'open\n';"]);
        assert!(buffer.is_empty());
        buffer.push_line("   ");
        assert!(buffer.is_empty());
    }
}
