//! End-to-end tests of `hindsight shell` against a real primary: `-c`, `-f`, piped input, the
//! three output formats checked exactly, errors and exit statuses.

mod common;

use common::{run_shell, stderr, stdout, Primary};

const SETUP: &str =
    "CREATE TABLE accounts (id BIGINT PRIMARY KEY, owner TEXT, balance DOUBLE, active BOOLEAN); \
INSERT INTO accounts VALUES (1, 'alice', 100.5, true), (2, 'bob, jr', -3, false), (10, NULL, 0.25, NULL)";

const SELECT: &str = "SELECT id, owner, balance, active FROM accounts ORDER BY id";

#[test]
fn shell_round_trip_in_every_format() -> anyhow::Result<()> {
    let temp = tempfile::tempdir()?;
    let primary = Primary::start(&temp.path().join("data"))?;

    let setup = primary.shell(&["-c", SETUP])?;
    assert!(setup.status.success(), "{}", stderr(&setup));
    let out = stdout(&setup);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert!(lines[0].starts_with("CREATE TABLE (txid 1, lsn 0/"), "{out}");
    assert!(lines[1].starts_with("INSERT 0 3 (txid 2, lsn 0/"), "{out}");

    let table = primary.shell(&["-c", SELECT])?;
    assert!(table.status.success(), "{}", stderr(&table));
    assert_eq!(
        stdout(&table),
        concat!(
            " id |  owner  | balance | active\n",
            "----+---------+---------+--------\n",
            "  1 | alice   |   100.5 | true\n",
            "  2 | bob, jr |      -3 | false\n",
            " 10 |         |    0.25 |\n",
            "(3 rows)\n",
            "\n",
        )
    );

    let csv = primary.shell(&["--format", "csv", "-c", SELECT])?;
    assert!(csv.status.success(), "{}", stderr(&csv));
    assert_eq!(
        stdout(&csv),
        "id,owner,balance,active\n1,alice,100.5,true\n2,\"bob, jr\",-3,false\n10,,0.25,\n"
    );

    let json = primary.shell(&["--format", "json", "-c", SELECT])?;
    assert!(json.status.success(), "{}", stderr(&json));
    assert_eq!(
        stdout(&json),
        concat!(
            r#"{"tag":"SELECT 3","columns":[{"name":"id","type":"BIGINT"},{"name":"owner","type":"TEXT"},"#,
            r#"{"name":"balance","type":"DOUBLE"},{"name":"active","type":"BOOLEAN"}],"#,
            r#""rows":[[1,"alice",100.5,true],[2,"bob, jr",-3.0,false],[10,null,0.25,null]],"rows_affected":3}"#,
            "\n"
        )
    );
    Ok(())
}

#[test]
fn errors_stop_scripts_with_status_3() -> anyhow::Result<()> {
    let temp = tempfile::tempdir()?;
    let primary = Primary::start(&temp.path().join("data"))?;
    let output = primary.shell(&[
        "-c",
        "CREATE TABLE t (id BIGINT PRIMARY KEY)",
        "-c",
        "SELECT id\nFROM nope",
        "-c",
        "INSERT INTO t VALUES (1)",
    ])?;
    assert_eq!(output.status.code(), Some(3), "{}", stderr(&output));
    assert_eq!(stdout(&output).lines().count(), 1, "stopped at the failure: {}", stdout(&output));
    let err = stderr(&output);
    assert!(err.starts_with("ERROR: "), "{err}");
    assert!(err.lines().next().is_some_and(|l| l.ends_with("(undefined_table)")), "{err}");
    let count = primary.shell(&["--format", "csv", "-c", "SELECT count(*) AS n FROM t"])?;
    assert_eq!(stdout(&count), "n\n0\n", "the -c after the failure did not run");

    let syntax = primary.shell(&["-c", "SELECT 1;\nSELEC 2"])?;
    assert_eq!(syntax.status.code(), Some(3));
    let err = stderr(&syntax);
    assert!(err.contains("(syntax_error)"), "{err}");
    assert!(err.contains("LINE 2: SELEC 2\n        ^"), "the caret points at the error:\n{err}");
    Ok(())
}

#[test]
fn piped_input_and_files_run_statement_by_statement() -> anyhow::Result<()> {
    let temp = tempfile::tempdir()?;
    let primary = Primary::start(&temp.path().join("data"))?;
    let script = "CREATE TABLE notes (id BIGINT PRIMARY KEY, body TEXT);\n\
                  INSERT INTO notes VALUES (1, 'semi;colon'),\n  (2, 'it''s');  -- a comment; still fine\n\
                  \\timing off\n\
                  SELECT body FROM notes ORDER BY id;\n";
    let piped = primary.shell_with_input(&["--format", "csv"], Some(script))?;
    assert!(piped.status.success(), "{}", stderr(&piped));
    assert_eq!(stdout(&piped), "Timing is off.\nbody\nsemi;colon\nit's\n", "no prompts, no banner");

    let path = temp.path().join("script.sql");
    std::fs::write(
        &path,
        "BEGIN;\nINSERT INTO notes VALUES (3, 'x');\nINSERT INTO notes VALUES (1, 'dup');\nCOMMIT;\n",
    )?;
    let file = primary.shell(&["-f", path.to_str().unwrap_or_default()])?;
    assert_eq!(file.status.code(), Some(3), "the duplicate key fails the script");
    assert!(stderr(&file).contains("(unique_violation)"), "{}", stderr(&file));
    let count = primary.shell(&["--format", "csv", "-c", "SELECT count(*) AS n FROM notes"])?;
    assert_eq!(stdout(&count), "n\n2\n", "the failed transaction was not committed");
    Ok(())
}

#[test]
fn a_wrong_password_or_a_dead_server_is_status_2() -> anyhow::Result<()> {
    let temp = tempfile::tempdir()?;
    let mut primary = Primary::start(&temp.path().join("data"))?;
    let wrong = run_shell(&primary.addr, "nope", &["-c", "SELECT 1"], None)?;
    assert_eq!(wrong.status.code(), Some(2));
    let err = stderr(&wrong);
    assert!(err.contains("invalid_password") && err.lines().count() == 1, "{err}");
    let addr = primary.addr.clone();
    assert!(primary.terminate()?.success());
    let gone = run_shell(&addr, "x", &["-c", "SELECT 1"], None)?;
    assert_eq!(gone.status.code(), Some(2));
    assert!(stderr(&gone).contains("could not connect"), "{}", stderr(&gone));
    Ok(())
}
