//! Network faults between real processes on one machine: each broker of a group listens on its
//! own loopback address (`127.100.<run>.<member>`) and connects to its peers from it, and
//! iptables rules in a chain of this run's own drop that address's packets (isolation) or a
//! share of them (loss). Needs root and iptables; [`Firewall::new`] says when they are missing.

use std::process::Command;

/// This run's iptables chain, removed (with its rules) on drop.
pub struct Firewall {
    chain: String,
}

fn iptables(args: &[&str]) -> Result<(), String> {
    let output = Command::new("iptables")
        .args(args)
        .output()
        .map_err(|err| format!("iptables: {err}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "iptables {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

impl Firewall {
    /// Creates the chain and hooks it into INPUT (loopback traffic passes there), or says why
    /// it cannot.
    pub fn new() -> Result<Firewall, String> {
        let chain = format!("FERROMQ_{}", std::process::id());
        iptables(&["-N", &chain])?;
        let firewall = Firewall { chain };
        iptables(&["-I", "INPUT", "-j", &firewall.chain])?;
        // The statistic match is needed for packet loss; check it now.
        iptables(&[
            "-A",
            &firewall.chain,
            "-d",
            "127.255.255.254",
            "-m",
            "statistic",
            "--mode",
            "random",
            "--probability",
            "0.5",
            "-j",
            "DROP",
        ])?;
        firewall.heal();
        Ok(firewall)
    }

    /// Loopback addresses for `count` members, distinct for this process.
    pub fn member_hosts(count: usize) -> Vec<String> {
        let run = std::process::id() % 250 + 1;
        (0..count)
            .map(|i| format!("127.100.{run}.{}", i + 1))
            .collect()
    }

    /// Drops every packet to and from `host`.
    pub fn isolate(&self, host: &str) {
        for direction in ["-s", "-d"] {
            if let Err(err) = iptables(&["-A", &self.chain, direction, host, "-j", "DROP"]) {
                eprintln!("cannot isolate {host}: {err}");
            }
        }
    }

    /// Drops a share (0..1) of the packets to `host`.
    pub fn lose(&self, host: &str, share: f64) {
        let share = format!("{share:.2}");
        let rule = [
            "-A",
            &self.chain,
            "-d",
            host,
            "-m",
            "statistic",
            "--mode",
            "random",
            "--probability",
            &share,
            "-j",
            "DROP",
        ];
        if let Err(err) = iptables(&rule) {
            eprintln!("cannot add packet loss for {host}: {err}");
        }
    }

    /// Removes every rule: the network is whole again.
    pub fn heal(&self) {
        if let Err(err) = iptables(&["-F", &self.chain]) {
            eprintln!("cannot flush {}: {err}", self.chain);
        }
    }
}

impl Drop for Firewall {
    fn drop(&mut self) {
        let _ = iptables(&["-F", &self.chain]);
        let _ = iptables(&["-D", "INPUT", "-j", &self.chain]);
        let _ = iptables(&["-X", &self.chain]);
    }
}
