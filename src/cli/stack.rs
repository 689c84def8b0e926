//! `kelp stack`: creates the cluster volumes a stack file describes, because
//! `docker stack deploy` never does (moby #49257). A top-level volume is a kelp cluster
//! volume when it carries the compose schema's `x-cluster-spec` extension, or
//! `kelp.*` labels; missing ones are created with `docker volume create`, existing
//! ones are left alone, so the command is safe to run before every deploy.

use super::{Error, Result};
use clap::Args;
use serde_yaml_ng::Value;
use std::path::PathBuf;

#[derive(Args)]
pub struct StackArgs {
    /// The stack (compose) file.
    #[arg(short = 'c', long = "compose-file")]
    file: PathBuf,
    /// Volume driver: the plugin's full reference (Swarm matches it with the tag).
    #[arg(long, default_value = "kelp:latest")]
    driver: String,
    /// Print the `docker volume create` commands instead of running them.
    #[arg(long)]
    dry_run: bool,
}

/// One volume to create: its name and the `docker volume create` arguments.
#[derive(Debug, PartialEq)]
pub struct Planned {
    pub name: String,
    pub args: Vec<String>,
}

pub async fn run(a: StackArgs) -> Result<()> {
    let text = std::fs::read_to_string(&a.file).map_err(super::io(a.file.display()))?;
    let planned = plan(&text, &a.driver)?;
    if planned.is_empty() {
        println!("no kelp cluster volumes in {}", a.file.display());
    }
    for p in planned {
        if a.dry_run {
            println!("docker {}", p.args.join(" "));
            continue;
        }
        match super::docker(&["volume", "inspect", &p.name]) {
            Ok(_) => {
                println!("{}: exists", p.name);
                continue;
            }
            // docker ran and found no such volume; anything else is an error.
            Err(Error::Refused(_)) => {}
            Err(e) => return Err(e),
        }
        let args: Vec<&str> = p.args.iter().map(String::as_str).collect();
        super::docker(&args).map_err(|e| Error::Refused(format!("creating {}: {e}", p.name)))?;
        println!("{}: created", p.name);
    }
    Ok(())
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Reads the stack file and plans a `docker volume create` for each cluster volume.
pub fn plan(yaml: &str, driver: &str) -> Result<Vec<Planned>> {
    let doc: Value =
        serde_yaml_ng::from_str(yaml).map_err(|e| Error::Refused(format!("not a stack file: {e}")))?;
    let Some(volumes) = doc.get("volumes").and_then(Value::as_mapping) else { return Ok(Vec::new()) };
    let mut out = Vec::new();
    for (key, spec) in volumes {
        let key = text(key).ok_or_else(|| Error::Refused("a volume name is not a string".into()))?;
        let name = spec.get("name").and_then(text).unwrap_or_else(|| key.clone());
        let labels = spec.get("labels");
        let label = |k: &str| labels.and_then(|l| l.get(format!("kelp.{k}"))).and_then(text);
        let cs = spec.get("x-cluster-spec");
        if cs.is_none() && label("scope").is_none() && label("sharing").is_none() {
            continue;
        }
        let get = |path: &[&str]| {
            let mut v = cs?;
            for p in path {
                v = v.get(*p)?;
            }
            text(v)
        };
        let mut args = vec!["volume".to_string(), "create".into(), "-d".into(), driver.to_string()];
        let block = cs.and_then(|c| c.get("access_mode")).and_then(|m| m.get("block_volume")).is_some();
        args.extend(["--type".into(), if block { "block" } else { "mount" }.into()]);
        let mut flag = |f: &str, v: Option<String>| {
            if let Some(v) = v {
                args.push(format!("--{f}"));
                args.push(v);
            }
        };
        flag("scope", get(&["access_mode", "scope"]).or_else(|| label("scope")));
        flag("sharing", get(&["access_mode", "sharing"]).or_else(|| label("sharing")));
        flag("group", get(&["group"]).or_else(|| label("group")));
        flag("availability", get(&["availability"]).or_else(|| label("availability")));
        flag(
            "required-bytes",
            get(&["capacity_range", "required_bytes"]).or_else(|| label("required-bytes")),
        );
        flag("limit-bytes", get(&["capacity_range", "limit_bytes"]).or_else(|| label("limit-bytes")));
        if let Some(secrets) = cs.and_then(|c| c.get("secrets")).and_then(Value::as_sequence) {
            for s in secrets {
                let (k, v) = (s.get("key").and_then(text), s.get("secret").and_then(text));
                let (Some(k), Some(v)) = (k, v) else {
                    return Err(Error::Refused(format!("volume {name}: a secret needs key and secret")));
                };
                flag("secret", Some(format!("{k}={v}")));
            }
        }
        for (section, place) in [("requisite", "topology-required"), ("preferred", "topology-preferred")] {
            let topo = cs.and_then(|c| c.get("accessibility_requirements")).and_then(|a| a.get(section));
            for t in topo.and_then(Value::as_sequence).into_iter().flatten() {
                for (k, v) in t.get("segments").and_then(Value::as_mapping).into_iter().flatten() {
                    if let (Some(k), Some(v)) = (text(k), text(v)) {
                        flag(place, Some(format!("{k}={v}")));
                    }
                }
            }
        }
        for (k, v) in spec.get("driver_opts").and_then(Value::as_mapping).into_iter().flatten() {
            if let (Some(k), Some(v)) = (text(k), text(v)) {
                flag("opt", Some(format!("{k}={v}")));
            }
        }
        args.push(name.clone());
        out.push(Planned { name, args });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const STACK: &str = r#"
version: "3.10"
services:
  web: {image: nginx}
volumes:
  media:
    external: true
    driver_opts: {compression: lz4}
    x-cluster-spec:
      group: g1
      access_mode: {scope: multi, sharing: all}
      capacity_range: {required_bytes: "10737418240"}
      secrets: [{key: access-key, secret: abc123}]
      accessibility_requirements:
        requisite: [{segments: {zone: a}}]
  logs:
    name: app-logs
    labels: {kelp.scope: single, kelp.sharing: none, kelp.required-bytes: "1G"}
  plain: {}
"#;

    #[test]
    fn plans_cluster_volumes_from_spec_and_labels() {
        let p = plan(STACK, "kelp:latest").unwrap();
        assert_eq!(p.len(), 2);
        assert_eq!(
            p[0].args.join(" "),
            "volume create -d kelp:latest --type mount --scope multi --sharing all --group g1 \
             --required-bytes 10737418240 --secret access-key=abc123 --topology-required zone=a --opt compression=lz4 media"
        );
        assert_eq!(p[1].name, "app-logs");
        assert!(p[1].args.join(" ").ends_with("--scope single --sharing none --required-bytes 1G app-logs"));
    }

    #[test]
    fn rejects_what_is_not_a_stack_and_ignores_plain_volumes() {
        assert!(plan("volumes: [", "k").is_err());
        assert!(plan("services: {}", "k").unwrap().is_empty());
        assert!(plan("volumes: {a: {driver: local}}", "k").unwrap().is_empty());
    }
}
