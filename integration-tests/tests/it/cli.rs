//! The operator CLI as scripts see it, through the real binaries against one controller:
//! exit codes (usage 2, runtime 1, refusal 3, "nothing to renew" 0 or 5 on request), formats
//! refused rather than replaced, `--no-headers`, and tables without box drawing when piped.

use std::process::Output;

use crate::support::{Controller, bin};

fn code(o: &Output) -> i32 {
    o.status.code().expect("exited, not killed")
}

fn err(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn exit_codes_formats_and_refusals() {
    let tmp = tempfile::tempdir().unwrap();
    let c = Controller::start(tmp.path(), &[]);
    c.wait_connected(0);

    // Usage: clap's own refusals, and a format a command cannot print.
    let o = c.cli_as(&c.admin(), &["agents", "list", "-o", "xml"]);
    assert_eq!(code(&o), 2, "{}", err(&o));
    let o = c.cli_as(&c.admin(), &["plan", "recipes", "--bogus"]);
    assert_eq!(code(&o), 2, "{}", err(&o));
    // An unknown recipe is the caller's mistake: 2, with the valid names.
    let o = c.cli_as(
        &c.admin(),
        &["plan", "create", "no-such-recipe", "--dry-run"],
    );
    assert_eq!(code(&o), 2, "{}", err(&o));
    assert!(err(&o).contains("files"), "{}", err(&o));

    // Nothing to renew (no agents): exit 0 with the reason on stderr, stdout empty for scripts;
    // --fail-if-nothing turns it into 5.
    let o = c.cli_as(
        &c.admin(),
        &["plan", "create", "files", "--dry-run", "-o", "json"],
    );
    assert_eq!(code(&o), 0, "{}", err(&o));
    assert!(err(&o).contains("nothing to renew"), "{}", err(&o));
    assert!(
        o.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    let o = c.cli_as(
        &c.admin(),
        &["plan", "create", "files", "--dry-run", "--fail-if-nothing"],
    );
    assert_eq!(code(&o), 5, "{}", err(&o));
    assert!(err(&o).contains("nothing to renew"), "{}", err(&o));

    // Refusal: a viewer may not create tokens (3), and says why.
    let viewer = tmp.path().join("viewer");
    c.cli(&[
        "operators",
        "issue",
        "vic",
        "--role",
        "viewer",
        "--out",
        viewer.to_str().unwrap(),
    ]);
    let o = c.cli_as(&viewer, &["token", "create", "--ttl", "1h"]);
    assert_eq!(code(&o), 3, "{}", err(&o));
    assert!(err(&o).contains("needs admin"), "{}", err(&o));

    // Every listing prints every format; csv without headers for scripts.
    c.cli(&["token", "create", "--ttl", "1h", "--label", "site=dc1"]);
    for f in ["table", "wide", "json", "yaml", "csv"] {
        let out = c.cli(&["token", "list", "-o", f]);
        assert!(!out.is_empty(), "token list -o {f} printed nothing");
        // Piped tables: no box drawing, no colour.
        assert!(!out.contains(['│', '─', '┌', '\x1b']), "-o {f}:\n{out}");
    }
    let csv = c.cli(&["token", "list", "-o", "csv"]);
    assert!(csv.starts_with("id,state,"), "{csv}");
    let bare = c.cli(&["token", "list", "-o", "csv", "--no-headers"]);
    assert_eq!(bare.lines().count(), csv.lines().count() - 1, "{bare}");
    assert!(bare.contains("site=dc1"), "{bare}");
    let table = c.cli(&["token", "list", "--no-headers"]);
    assert!(!table.contains("STATE"), "{table}");
    let yaml = c.cli(&["operators", "list", "-o", "yaml"]);
    assert!(yaml.contains("name: vic"), "{yaml}");

    // Runtime: nothing listens there (1).
    let o = std::process::Command::new(bin("certfleet"))
        .args(["--controller", "127.0.0.1:1", "--identity"])
        .arg(c.admin())
        .args(["agents", "list"])
        .output()
        .unwrap();
    assert_eq!(code(&o), 1, "{}", err(&o));
    assert!(err(&o).contains("127.0.0.1:1"), "{}", err(&o));
}
