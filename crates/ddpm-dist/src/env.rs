//! The process's place in a job, read from the variables torchrun sets (`env://` rendezvous).
use std::ffi::OsString;
use std::str::FromStr;

use crate::error::{DistError, Result};

/// The process's place in the job, as torchrun (or a launcher that sets the same variables) passes
/// it.
///
/// A job has `world_size` ranks, `0..world_size`, of which `local_world_size` run on this machine
/// as local ranks `0..local_world_size`. They meet at a c10d `TCPStore` at
/// `master_addr:master_port`, which rank 0 hosts — unless torchrun's agent already hosts it
/// (`agent_store`), in which case every rank connects to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DistEnv {
    /// This process's rank (`RANK`), `< world_size`.
    pub rank: usize,
    /// Number of processes in the job (`WORLD_SIZE`), ≥ 1.
    pub world_size: usize,
    /// This process's rank on its machine (`LOCAL_RANK`), `< local_world_size`; with CUDA it
    /// picks the device.
    pub local_rank: usize,
    /// Number of processes on this machine (`LOCAL_WORLD_SIZE`), `≤ world_size`.
    pub local_world_size: usize,
    /// Host name or address of the store (`MASTER_ADDR`).
    pub master_addr: String,
    /// TCP port of the store (`MASTER_PORT`), 1–65535.
    pub master_port: u16,
    /// torchrun's agent hosts the store (`TORCHELASTIC_USE_AGENT_STORE=True`): rank 0 connects
    /// to it instead of hosting one (it could not bind the port).
    pub agent_store: bool,
    /// How often torchrun has restarted the job (`TORCHELASTIC_RESTART_COUNT`, 0 when unset). The
    /// agent's store outlives a restart, so each attempt keeps its keys under its own prefix.
    pub restart_count: u32,
    /// Network interfaces for Gloo (`GLOO_SOCKET_IFNAME`, comma-separated, as torch.distributed
    /// reads it); `None` when unset or empty.
    pub gloo_socket_ifname: Option<String>,
}

impl DistEnv {
    /// The job from the process environment: `Ok(None)` when `WORLD_SIZE` is unset (a plain
    /// single-process run).
    ///
    /// # Errors
    /// [`DistError::MissingVar`] when `WORLD_SIZE` is set but one of `RANK`, `LOCAL_RANK`,
    /// `LOCAL_WORLD_SIZE`, `MASTER_ADDR`, `MASTER_PORT` is not; [`DistError::InvalidVar`] naming
    /// the variable when one is not a number, out of range or inconsistent with another (e.g.
    /// `RANK` ≥ `WORLD_SIZE`).
    pub fn from_env() -> Result<Option<Self>> {
        Self::from_vars(|name| std::env::var_os(name))
    }

    /// As [`DistEnv::from_env`], with the variables looked up through `var` (for tests, or an
    /// environment other than this process's).
    pub fn from_vars(var: impl Fn(&str) -> Option<OsString>) -> Result<Option<Self>> {
        let get = |name: &'static str| var(name).map(|v| (name, v.to_string_lossy().into_owned()));
        let Some(world_size) = get("WORLD_SIZE") else {
            return Ok(None);
        };
        let need = |name: &'static str| get(name).ok_or(DistError::MissingVar { name });
        let world_size: usize = parse(&world_size, "a positive integer")?;
        let rank: usize = parse(&need("RANK")?, "a non-negative integer")?;
        let local_rank: usize = parse(&need("LOCAL_RANK")?, "a non-negative integer")?;
        let local_world_size_var = need("LOCAL_WORLD_SIZE")?;
        let local_world_size: usize = parse(&local_world_size_var, "a positive integer")?;
        let (_, master_addr) = need("MASTER_ADDR")?;
        let master_port_var = need("MASTER_PORT")?;
        let master_port: u16 = parse(&master_port_var, "a TCP port (1-65535)")?;
        let agent_store = match get("TORCHELASTIC_USE_AGENT_STORE") {
            None => false,
            Some((_, v)) if matches!(v.as_str(), "True" | "true" | "1") => true,
            Some((_, v)) if matches!(v.as_str(), "False" | "false" | "0" | "") => false,
            Some(var) => {
                return Err(invalid(
                    &var,
                    "expected True or False (as torchrun sets it)",
                ))
            }
        };
        let restart_count = match get("TORCHELASTIC_RESTART_COUNT") {
            Some(var) => parse(&var, "a non-negative integer")?,
            None => 0,
        };
        let gloo_socket_ifname = get("GLOO_SOCKET_IFNAME")
            .map(|(_, v)| v)
            .filter(|v| !v.is_empty());

        let check = |ok: bool, var: &(&'static str, String), problem: String| {
            if ok {
                Ok(())
            } else {
                Err(invalid(var, &problem))
            }
        };
        let world_var = ("WORLD_SIZE", world_size.to_string());
        check(world_size >= 1, &world_var, "must be at least 1".into())?;
        check(
            rank < world_size,
            &("RANK", rank.to_string()),
            format!("must be below WORLD_SIZE={world_size}"),
        )?;
        check(
            local_world_size >= 1 && local_world_size <= world_size,
            &local_world_size_var,
            format!("must be between 1 and WORLD_SIZE={world_size}"),
        )?;
        check(
            local_rank < local_world_size,
            &("LOCAL_RANK", local_rank.to_string()),
            format!("must be below LOCAL_WORLD_SIZE={local_world_size}"),
        )?;
        check(
            master_port != 0,
            &master_port_var,
            "port 0 names no store".into(),
        )?;
        check(
            !master_addr.trim().is_empty(),
            &("MASTER_ADDR", master_addr.clone()),
            "is empty".into(),
        )?;
        Ok(Some(Self {
            rank,
            world_size,
            local_rank,
            local_world_size,
            master_addr,
            master_port,
            agent_store,
            restart_count,
            gloo_socket_ifname,
        }))
    }

    /// Whether every rank runs on this machine (`LOCAL_WORLD_SIZE == WORLD_SIZE`).
    pub fn single_machine(&self) -> bool {
        self.local_world_size == self.world_size
    }

    /// Whether this process hosts the store: rank 0, unless torchrun's agent hosts it.
    pub fn hosts_store(&self) -> bool {
        self.rank == 0 && !self.agent_store
    }
}

fn invalid((name, value): &(&'static str, String), problem: &str) -> DistError {
    DistError::InvalidVar {
        name,
        value: value.clone(),
        problem: problem.to_string(),
    }
}

fn parse<T: FromStr>(var: &(&'static str, String), expected: &str) -> Result<T> {
    var.1
        .trim()
        .parse()
        .map_err(|_| invalid(var, &format!("expected {expected}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// torchrun's variables for rank 1 of 2 on one machine, with `changes` applied (`None`
    /// removes a variable).
    fn vars(changes: &[(&str, Option<&str>)]) -> Result<Option<DistEnv>> {
        let mut map: HashMap<String, String> = [
            ("RANK", "1"),
            ("WORLD_SIZE", "2"),
            ("LOCAL_RANK", "1"),
            ("LOCAL_WORLD_SIZE", "2"),
            ("MASTER_ADDR", "127.0.0.1"),
            ("MASTER_PORT", "29500"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        for (k, v) in changes {
            match v {
                Some(v) => map.insert(k.to_string(), v.to_string()),
                None => map.remove(*k),
            };
        }
        DistEnv::from_vars(|name| map.get(name).map(OsString::from))
    }

    fn invalid_var(r: Result<Option<DistEnv>>) -> (&'static str, String, String) {
        match r {
            Err(DistError::InvalidVar {
                name,
                value,
                problem,
            }) => (name, value, problem),
            other => panic!("expected InvalidVar, got {other:?}"),
        }
    }

    #[test]
    fn without_world_size_there_is_no_job() {
        assert_eq!(vars(&[("WORLD_SIZE", None)]).unwrap(), None);
        // Even with the other variables garbled: WORLD_SIZE alone switches distribution on.
        assert_eq!(
            vars(&[("WORLD_SIZE", None), ("RANK", Some("x"))]).unwrap(),
            None
        );
    }

    #[test]
    fn torchruns_variables_are_read() {
        let env = vars(&[
            ("TORCHELASTIC_USE_AGENT_STORE", Some("True")),
            ("TORCHELASTIC_RESTART_COUNT", Some("3")),
            ("GLOO_SOCKET_IFNAME", Some("eth0,eth1")),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(
            env,
            DistEnv {
                rank: 1,
                world_size: 2,
                local_rank: 1,
                local_world_size: 2,
                master_addr: "127.0.0.1".into(),
                master_port: 29500,
                agent_store: true,
                restart_count: 3,
                gloo_socket_ifname: Some("eth0,eth1".into()),
            }
        );
        assert!(env.single_machine());
        assert!(!env.hosts_store());
        let plain = vars(&[("GLOO_SOCKET_IFNAME", Some(""))]).unwrap().unwrap();
        assert!(!plain.agent_store);
        assert_eq!(plain.restart_count, 0);
        assert_eq!(plain.gloo_socket_ifname, None);
        let rank0 = vars(&[("RANK", Some("0")), ("LOCAL_RANK", Some("0"))])
            .unwrap()
            .unwrap();
        assert!(rank0.hosts_store());
    }

    #[test]
    fn a_missing_variable_is_named() {
        for name in [
            "RANK",
            "LOCAL_RANK",
            "LOCAL_WORLD_SIZE",
            "MASTER_ADDR",
            "MASTER_PORT",
        ] {
            let e = vars(&[(name, None)]).unwrap_err();
            assert!(
                matches!(e, DistError::MissingVar { name: n } if n == name),
                "{name}: {e:?}"
            );
            let text = e.to_string();
            assert!(
                text.starts_with(&format!("WORLD_SIZE is set but {name} is not")),
                "{text}"
            );
        }
    }

    #[test]
    fn a_garbled_variable_is_named_with_its_value() {
        for (name, value) in [
            ("WORLD_SIZE", "two"),
            ("WORLD_SIZE", ""),
            ("RANK", "-1"),
            ("LOCAL_RANK", "1.0"),
            ("LOCAL_WORLD_SIZE", "0x2"),
            ("MASTER_PORT", "65536"),
            ("MASTER_PORT", "http"),
            ("TORCHELASTIC_USE_AGENT_STORE", "yes"),
            ("TORCHELASTIC_RESTART_COUNT", "-2"),
        ] {
            let (n, v, problem) = invalid_var(vars(&[(name, Some(value))]));
            assert_eq!((n, v.as_str()), (name, value), "{problem}");
            assert!(problem.starts_with("expected "), "{name}: {problem}");
        }
        let e = vars(&[("RANK", Some("seven"))]).unwrap_err().to_string();
        assert_eq!(
            e,
            "environment variable RANK=\"seven\" is invalid: expected a non-negative integer"
        );
    }

    #[test]
    fn inconsistent_variables_are_named() {
        for (changes, name, fragment) in [
            (vec![("WORLD_SIZE", Some("0"))], "WORLD_SIZE", "at least 1"),
            (vec![("RANK", Some("2"))], "RANK", "below WORLD_SIZE=2"),
            (
                vec![("LOCAL_WORLD_SIZE", Some("3"))],
                "LOCAL_WORLD_SIZE",
                "between 1 and WORLD_SIZE=2",
            ),
            (
                vec![("LOCAL_WORLD_SIZE", Some("1"))],
                "LOCAL_RANK",
                "below LOCAL_WORLD_SIZE=1",
            ),
            (vec![("MASTER_PORT", Some("0"))], "MASTER_PORT", "port 0"),
            (vec![("MASTER_ADDR", Some(" "))], "MASTER_ADDR", "empty"),
        ] {
            let (n, _, problem) = invalid_var(vars(&changes));
            assert_eq!(n, name, "{problem}");
            assert!(problem.contains(fragment), "{name}: {problem}");
        }
    }

    #[test]
    fn a_non_utf8_value_is_reported_not_dropped() {
        use std::os::unix::ffi::OsStringExt;
        let r = DistEnv::from_vars(|name| match name {
            "WORLD_SIZE" => Some(OsString::from_vec(vec![b'2', 0xff])),
            _ => Some(OsString::from("0")),
        });
        let (name, value, _) = invalid_var(r);
        assert_eq!(name, "WORLD_SIZE");
        assert_eq!(value, "2\u{fffd}");
    }
}
