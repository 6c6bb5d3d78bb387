//! VCDB for the simulated VCSA: a real PostgreSQL (Debian's `postgresql` package) holding the
//! `vpx_ext` table, read and changed with the real `psql`, linked where the appliance has it
//! (`/opt/vmware/vpostgres/current/bin/psql`).
//!
//! Source: Broadcom KB 57379 and the project reference §8.9/§9.2 (vCert, fixcerts.py):
//! `psql -d VCDB -U postgres -c "SELECT ext_id, thumbprint FROM vpx_ext WHERE ext_id IN (...)"`,
//! thumbprints `AA:BB:…` uppercase SHA-1; `com.vmware.vsan.health` carries the Machine SSL
//! thumbprint, `com.vmware.vim.eam`, `com.vmware.rbd` (not on 8.0), `com.vmware.imagebuilder`,
//! `com.vmware.vcIntegrity` and 8.0's `com.vmware.vlcm.client` the vpxd-extension solution
//! user's. [UNV] the real table has more columns (only `ext_id`, `version`, `company`,
//! `thumbprint` here) and the exact set of extensions differs by version and deployment.
//!
//! PostgreSQL refuses to run as root, so as root `initdb` and `postgres` run as the `postgres`
//! user, in a directory of their own under the system temp directory (the test's root may not
//! be reachable for that user), listening on a unix socket only. Each start reloads the table
//! from the simulator state, like vmdir.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result};

use super::{VcsaState, VcsaVersion};
use crate::sim::SimHost;

/// Where the appliance has `psql` (reference §1).
pub const PSQL: &str = "/opt/vmware/vpostgres/current/bin/psql";

/// The newest `/usr/lib/postgresql/<v>/bin` with `postgres` and `initdb`.
pub fn pg_bin() -> Result<PathBuf> {
    let mut best: Option<(u32, PathBuf)> = None;
    if let Ok(rd) = std::fs::read_dir("/usr/lib/postgresql") {
        for e in rd.flatten() {
            let v: u32 = e.file_name().to_string_lossy().parse().unwrap_or(0);
            let bin = e.path().join("bin");
            if bin.join("postgres").exists()
                && bin.join("initdb").exists()
                && best.as_ref().is_none_or(|(b, _)| v > *b)
            {
                best = Some((v, bin));
            }
        }
    }
    best.map(|b| b.1).with_context(|| {
        "PostgreSQL is not installed (/usr/lib/postgresql/<version>/bin/postgres): the simulated \
         VCDB needs it; run `apt-get install -y postgresql postgresql-client`"
            .to_owned()
    })
}

/// Fails with the install hint if PostgreSQL or psql is missing.
pub fn require_postgres() -> Result<()> {
    pg_bin()?;
    anyhow::ensure!(
        Path::new("/usr/bin/psql").exists(),
        "psql is not installed (/usr/bin/psql): run `apt-get install -y postgresql-client`"
    );
    Ok(())
}

/// Extensions registered in `vpx_ext` and which certificate's thumbprint they carry
/// (`true`: Machine SSL, `false`: vpxd-extension).
pub fn extensions(version: VcsaVersion) -> Vec<(&'static str, bool)> {
    let mut v = vec![
        ("com.vmware.vim.eam", false),
        ("com.vmware.imagebuilder", false),
        ("com.vmware.vcIntegrity", false),
        ("com.vmware.vsan.health", true),
    ];
    if version == VcsaVersion::V80 {
        v.push(("com.vmware.vlcm.client", false));
    } else {
        v.push(("com.vmware.rbd", false));
    }
    v
}

/// `(uid, gid)` of the `postgres` user when running as root (PostgreSQL refuses root).
fn run_as() -> Result<Option<(u32, u32)>> {
    if !nix::unistd::geteuid().is_root() {
        return Ok(None);
    }
    let u = nix::unistd::User::from_name("postgres")?
        .context("no `postgres` user (installed by the postgresql package)")?;
    Ok(Some((u.uid.as_raw(), u.gid.as_raw())))
}

fn as_db_user(cmd: &mut Command, who: Option<(u32, u32)>) -> &mut Command {
    if let Some((uid, gid)) = who {
        cmd.uid(uid).gid(gid);
    }
    cmd
}

/// `psql` against the simulated VCDB (as the appliance's tools run it).
pub fn psql(s: &VcsaState, sql: &str) -> Result<String> {
    let out = Command::new("/usr/bin/psql")
        .args(["-h", &s.vcdb_dir, "-p", &s.vcdb_port.to_string()])
        .args(["-d", "VCDB", "-U", "postgres", "-v", "ON_ERROR_STOP=1"])
        .args(["-A", "-t", "-F", "|", "-c", sql])
        .output()
        .context("running psql")?;
    anyhow::ensure!(
        out.status.success(),
        "psql {sql:?}: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `ext_id → thumbprint` as VCDB holds it now.
pub fn vpx_ext(s: &VcsaState) -> Result<Vec<(String, String)>> {
    Ok(
        psql(s, "SELECT ext_id, thumbprint FROM vpx_ext ORDER BY ext_id")?
            .lines()
            .filter_map(|l| l.split_once('|'))
            .map(|(a, b)| (a.to_owned(), b.to_owned()))
            .collect(),
    )
}

/// Creates a fresh cluster in the state's VCDB directory, starts `postgres` in the foreground on
/// its unix socket and loads `vpx_ext` from the state.
pub fn start(host: &SimHost) -> Result<Child> {
    let s = VcsaState::load(host)?;
    let bin = pg_bin()?;
    let who = run_as()?;
    let dir = PathBuf::from(&s.vcdb_dir);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    if let Some((uid, gid)) = who {
        nix::unistd::chown(
            &dir,
            Some(nix::unistd::Uid::from_raw(uid)),
            Some(nix::unistd::Gid::from_raw(gid)),
        )?;
    }
    let data = dir.join("data");
    let out = as_db_user(Command::new(bin.join("initdb")).current_dir(&dir), who)
        .args([
            "-A",
            "trust",
            "-U",
            "postgres",
            "-E",
            "UTF8",
            "--no-sync",
            "-D",
        ])
        .arg(&data)
        .output()
        .context("running initdb")?;
    anyhow::ensure!(
        out.status.success(),
        "initdb failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let log = std::fs::File::create(dir.join("postgres.log"))?;
    let mut child = as_db_user(Command::new(bin.join("postgres")).current_dir(&dir), who)
        .arg("-D")
        .arg(&data)
        .arg("-k")
        .arg(&dir)
        .args(["-p", &s.vcdb_port.to_string()])
        .args(["-c", "listen_addresses=", "-c", "fsync=off"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .context("starting postgres")?;
    let socket = dir.join(format!(".s.PGSQL.{}", s.vcdb_port));
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut ready = false;
    while std::time::Instant::now() < deadline {
        if socket.exists()
            && Command::new("/usr/bin/psql")
                .args(["-h", &s.vcdb_dir, "-p", &s.vcdb_port.to_string()])
                .args(["-U", "postgres", "-d", "postgres", "-c", "SELECT 1"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|st| st.success())
        {
            ready = true;
            break;
        }
        if let Some(st) = child.try_wait()? {
            let log = std::fs::read_to_string(dir.join("postgres.log")).unwrap_or_default();
            anyhow::bail!("postgres exited: {st}\n{log}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    if !ready {
        let _ = child.kill();
        let _ = child.wait();
        anyhow::bail!("postgres did not come up on {}", socket.display());
    }
    let load = || -> Result<()> {
        let create = Command::new("/usr/bin/psql")
            .args(["-h", &s.vcdb_dir, "-p", &s.vcdb_port.to_string()])
            .args([
                "-U",
                "postgres",
                "-d",
                "postgres",
                "-c",
                "CREATE DATABASE \"VCDB\"",
            ])
            .output()?;
        anyhow::ensure!(
            create.status.success(),
            "CREATE DATABASE VCDB: {}",
            String::from_utf8_lossy(&create.stderr)
        );
        let mut sql = String::from(
            "CREATE TABLE vpx_ext (ext_id varchar(255) PRIMARY KEY, version varchar(255), \
             company varchar(255), thumbprint varchar(255));",
        );
        for (id, tp) in &s.vpx_ext {
            anyhow::ensure!(
                !id.contains('\'') && !tp.contains('\''),
                "odd vpx_ext row {id:?}"
            );
            sql.push_str(&format!(
                "INSERT INTO vpx_ext VALUES ('{id}', '{}', 'VMware, Inc.', '{tp}');",
                s.build
            ));
        }
        psql(&s, &sql)?;
        Ok(())
    };
    if let Err(e) = load() {
        let _ = child.kill();
        let _ = child.wait();
        return Err(e);
    }
    Ok(child)
}
