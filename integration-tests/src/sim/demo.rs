//! `certfleet-sim demo-fleet --dir DIR`: the README demo's simulated fleet.
//!
//! One VCSA 7.0 (STS expired, wcp and Machine SSL close to expiry), one oVirt 4.5 engine with
//! three hosts (VDSM certificate expired, expiring in 20 days, healthy), one GKE admin
//! workstation (a user cluster whose CA expires in 20 days, another mid-rotation), and a small
//! corporate CA with an application host whose TLS certificate expires in 5 days (the generic
//! `files` recipe). Prints one line per host: `NAME ROOT AGENT_CONFIG [SERVICES]`, where
//! SERVICES names the simulator command that must run in the background for that host.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result};

use super::{Lifetime, SimHost, gke, ovirt, systemd, vcsa};

fn write_config(host: &SimHost, body: &str) -> Result<std::path::PathBuf> {
    let p = host.root.join("agent.toml");
    std::fs::write(&p, format!("root = \"{}\"\n{body}", host.root.display()))
        .with_context(|| format!("writing {}", p.display()))?;
    Ok(p)
}

fn sh(cwd: &Path, script: &str) -> Result<()> {
    let out = Command::new("sh")
        .arg("-c")
        .arg(script)
        .current_dir(cwd)
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// Builds the demo fleet under `dir`; returns the printed manifest lines.
pub fn build(dir: &Path, sim_bin: &Path) -> Result<Vec<String>> {
    let mut lines = Vec::new();
    let host = |name: &str| SimHost::new(dir.join(name), sim_bin);

    // vCenter.
    let h = host("vcsa-01")?;
    let spec = vcsa::VcsaSpec::new(vcsa::VcsaVersion::V70, "vcsa-01.lab.local")
        .with("sts", Lifetime::days(735, -5))
        .with("wcp", Lifetime::days(720, 10))
        .with("machine_ssl", Lifetime::days(710, 20));
    let v = vcsa::build(&h, &spec)?;
    let cfg = v.agent_config()?;
    lines.push(format!(
        "vcsa-01 {} {} vcsa-services",
        h.root.display(),
        cfg.display()
    ));

    // oVirt.
    let he = host("ovirt-engine-01")?;
    let engine = ovirt::build_engine(
        &he,
        &ovirt::EngineSpec::new(ovirt::OvirtVersion::V4_5, "engine.lab.local"),
    )?;
    he.link_real_tool("/usr/bin/openssl")?;
    let cfg = write_config(
        &he,
        "platforms = [\"ovirt_engine\"]\n[tools]\nopenssl = \"/usr/bin/openssl\"\n",
    )?;
    lines.push(format!(
        "ovirt-engine-01 {} {}",
        he.root.display(),
        cfg.display()
    ));
    for (i, life) in [
        Some(Lifetime::days(400, -2)),
        Some(Lifetime::days(378, 20)),
        None,
    ]
    .into_iter()
    .enumerate()
    {
        let name = format!("ovirt-host-0{}", i + 1);
        let hn = host(&name)?;
        let mut spec = ovirt::NodeSpec::new(&format!("{name}.lab.local"));
        spec.vdsm = life;
        ovirt::build_node(&hn, &spec, &engine)?;
        systemd::define_unit(&hn, "libvirtd", &["/etc/pki/vdsm/certs/vdsmcert.pem"])?;
        systemd::define_unit(&hn, "vdsmd", &["/etc/pki/vdsm/certs/vdsmcert.pem"])?;
        let cfg = write_config(
            &hn,
            "platforms = [\"ovirt_node\"]\n[tools]\nopenssl = \"/usr/bin/openssl\"\n",
        )?;
        lines.push(format!("{name} {} {}", hn.root.display(), cfg.display()));
    }

    // GKE on VMware admin workstation.
    let hg = host("gke-admin-01")?;
    let mut expiring = gke::UserClusterSpec::new("user-cluster-1", "user-cluster.yaml");
    expiring.ca = Lifetime::days(5 * 365 - 20, 20);
    let mut rotating = gke::UserClusterSpec::new("user-cluster-2", "user-cluster-2.yaml");
    rotating.rotation = Some(gke::Stage::ControlPlaneReissued);
    gke::build_admin_workstation(
        &hg,
        &gke::GkeSpec {
            users: vec![expiring, rotating],
            ..gke::GkeSpec::default()
        },
    )?;
    hg.link_real_tool("/usr/bin/openssl")?;
    let cfg = write_config(
        &hg,
        "platforms = [\"gke_admin\"]\n[tools]\nopenssl = \"/usr/bin/openssl\"\n",
    )?;
    lines.push(format!(
        "gke-admin-01 {} {}",
        hg.root.display(),
        cfg.display()
    ));

    // A corporate CA and an application host renewed by the generic `files` recipe.
    let hc = host("corp-ca-01")?;
    let ca = hc.path("/srv/ca");
    for d in ["private", "newcerts", "requests", "certs"] {
        std::fs::create_dir_all(ca.join(d))?;
    }
    std::fs::write(ca.join("openssl.cnf"), CORP_CA_CONF)?;
    std::fs::write(ca.join("index.txt"), "")?;
    std::fs::write(ca.join("serial"), "1000\n")?;
    sh(
        &ca,
        "openssl req -x509 -newkey rsa:2048 -nodes -keyout private/ca.key -out ca.pem -days 3650 -subj '/O=Corp/CN=Corp Issuing CA' 2>/dev/null && chmod 600 private/ca.key",
    )?;
    let cfg = write_config(
        &hc,
        "platforms = [\"files\"]\n[tools]\nopenssl = \"/usr/bin/openssl\"\n[[files]]\npaths = [\"/srv/ca/ca.pem\"]\nrole = \"file.ca\"\n[[cas]]\nname = \"corp\"\ndir = \"/srv/ca\"\ncommand = [\"openssl\", \"ca\", \"-batch\", \"-config\", \"openssl.cnf\", \"-days\", \"{days}\", \"-in\", \"{csr}\", \"-out\", \"{out}\", \"-notext\"]\ndays = 90\n",
    )?;
    lines.push(format!(
        "corp-ca-01 {} {}",
        hc.root.display(),
        cfg.display()
    ));
    let ha = host("web-01")?;
    let tls = ha.path("/etc/nginx/tls");
    std::fs::create_dir_all(&tls)?;
    sh(
        &tls,
        &format!(
            "openssl req -new -newkey rsa:2048 -nodes -keyout web.key -out web.csr -subj '/O=Corp/CN=web-01.lab.local' 2>/dev/null && \
             openssl x509 -req -in web.csr -CA {ca}/ca.pem -CAkey {ca}/private/ca.key -days 5 -set_serial 7 -out web.pem 2>/dev/null && \
             chmod 600 web.key && rm web.csr",
            ca = ca.display()
        ),
    )?;
    systemd::define_unit(&ha, "nginx", &["/etc/nginx/tls/web.pem"])?;
    let cfg = write_config(
        &ha,
        "platforms = [\"files\"]\n[tools]\nopenssl = \"/usr/bin/openssl\"\n[[renew]]\ncert = \"/etc/nginx/tls/web.pem\"\nkey = \"/etc/nginx/tls/web.key\"\nissuer = \"corp\"\nrestart = [\"nginx\"]\n",
    )?;
    lines.push(format!("web-01 {} {}", ha.root.display(), cfg.display()));
    Ok(lines)
}

/// An `openssl ca` configuration for a small corporate CA.
pub const CORP_CA_CONF: &str = r#"[ ca ]
default_ca = corp
[ corp ]
dir = .
database = $dir/index.txt
new_certs_dir = $dir/newcerts
certificate = $dir/ca.pem
private_key = $dir/private/ca.key
serial = $dir/serial
default_md = sha256
policy = policy_any
unique_subject = no
x509_extensions = leaf
[ policy_any ]
commonName = supplied
organizationName = optional
[ leaf ]
basicConstraints = CA:FALSE
keyUsage = digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
"#;
