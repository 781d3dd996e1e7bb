//! Test harness: real `raft-kv` processes on loopback ports with their own data directories,
//! driven through the `redis` crate. Every wait is bounded.

#![allow(dead_code)]

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_raft-kv");

/// Polls `cond` until it returns Some or `timeout` passes.
pub fn wait_until<T>(timeout: Duration, mut cond: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = cond() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Ports the OS reports free right now.
pub fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> =
        (0..n).map(|_| TcpListener::bind("127.0.0.1:0").unwrap()).collect();
    listeners.iter().map(|l| l.local_addr().unwrap().port()).collect()
}

pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub raft_ports: Vec<u16>,
    pub redis_ports: Vec<u16>,
    pub procs: Vec<Option<Child>>,
    pub extra_args: Vec<String>,
    /// Each node's `--metrics-addr` port (none: no metrics endpoint).
    pub metrics_ports: Vec<u16>,
}

impl Cluster {
    /// Starts `n` nodes and waits until a write commits.
    pub fn start(n: usize) -> Cluster {
        Cluster::start_with(n, &[])
    }

    pub fn start_with(n: usize, extra: &[&str]) -> Cluster {
        let ports = free_ports(2 * n);
        let mut c = Cluster {
            dir: tempfile::tempdir().unwrap(),
            raft_ports: ports[..n].to_vec(),
            redis_ports: ports[n..].to_vec(),
            procs: (0..n).map(|_| None).collect(),
            extra_args: extra.iter().map(|s| s.to_string()).collect(),
            metrics_ports: Vec::new(),
        };
        for id in 1..=n {
            c.start_node(id);
        }
        c.wait_writable();
        c
    }

    /// Starts `n` nodes, each serving `/metrics`, `/livez` and `/readyz` on a port of its own.
    pub fn start_with_metrics(n: usize) -> Cluster {
        let ports = free_ports(3 * n);
        let mut c = Cluster {
            dir: tempfile::tempdir().unwrap(),
            raft_ports: ports[..n].to_vec(),
            redis_ports: ports[n..2 * n].to_vec(),
            procs: (0..n).map(|_| None).collect(),
            extra_args: Vec::new(),
            metrics_ports: ports[2 * n..].to_vec(),
        };
        for id in 1..=n {
            c.start_node(id);
        }
        c.wait_writable();
        c
    }

    pub fn cluster_arg(&self) -> String {
        self.raft_ports.iter().map(|p| format!("127.0.0.1:{p}")).collect::<Vec<_>>().join(",")
    }

    pub fn data_dir(&self, id: usize) -> PathBuf {
        self.dir.path().join(format!("node{id}"))
    }

    pub fn command(&self, id: usize) -> Command {
        let mut cmd = Command::new(BIN);
        cmd.arg("--id")
            .arg(id.to_string())
            .arg("--cluster")
            .arg(self.cluster_arg())
            .arg("--port")
            .arg(self.redis_ports[id - 1].to_string())
            .arg("--data-dir")
            .arg(self.data_dir(id))
            .args(&self.extra_args)
            .args(
                self.metrics_ports
                    .get(id - 1)
                    .map(|p| ["--metrics-addr".to_string(), format!("127.0.0.1:{p}")])
                    .into_iter()
                    .flatten(),
            )
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(self.log_file(id));
        cmd
    }

    /// Each node's warnings and errors, appended across its restarts: shown when it fails to
    /// start.
    fn log_path(&self, id: usize) -> PathBuf {
        self.dir.path().join(format!("node{id}.log"))
    }

    fn log_file(&self, id: usize) -> Stdio {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(id))
            .map_or_else(|_| Stdio::null(), Stdio::from)
    }

    pub fn start_node(&mut self, id: usize) {
        assert!(self.procs[id - 1].is_none(), "node {id} already running");
        let child = self.command(id).spawn().expect("spawn raft-kv");
        self.procs[id - 1] = Some(child);
        let port = self.redis_ports[id - 1];
        wait_until(Duration::from_secs(10), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).ok()
        })
        .unwrap_or_else(|| {
            let exited = self.procs[id - 1].as_mut().and_then(|c| c.try_wait().ok().flatten());
            let log = std::fs::read_to_string(self.log_path(id)).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            panic!(
                "node {id} did not open its port (exited: {exited:?}); its log ends:\n{}",
                tail.join("\n")
            )
        });
    }

    /// SIGKILL: no chance to flush anything that was not already synced.
    pub fn kill(&mut self, id: usize) {
        if let Some(mut c) = self.procs[id - 1].take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    /// SIGTERM, then wait for the process to exit.
    pub fn terminate(&mut self, id: usize) {
        if let Some(mut c) = self.procs[id - 1].take() {
            let _ = Command::new("kill").arg("-TERM").arg(c.id().to_string()).status();
            let exited = wait_until(Duration::from_secs(10), || c.try_wait().ok().flatten());
            if exited.is_none() {
                c.kill().unwrap();
                c.wait().unwrap();
                panic!("node {id} ignored SIGTERM");
            }
        }
    }

    /// The client URL of node `id`, with the `--requirepass` password if the cluster has one.
    pub fn url(&self, id: usize) -> String {
        let pass = self.extra_args.iter().position(|a| a == "--requirepass");
        let auth = pass.map_or(String::new(), |i| format!(":{}@", self.extra_args[i + 1]));
        format!("redis://{auth}127.0.0.1:{}/", self.redis_ports[id - 1])
    }

    pub fn conn(&self, id: usize) -> redis::Connection {
        let client = redis::Client::open(self.url(id)).unwrap();
        let con = client.get_connection_with_timeout(Duration::from_secs(5)).unwrap();
        con.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
        con
    }

    pub fn try_conn(&self, id: usize) -> Option<redis::Connection> {
        let client = redis::Client::open(self.url(id)).ok()?;
        let con = client.get_connection_with_timeout(Duration::from_secs(2)).ok()?;
        con.set_read_timeout(Some(Duration::from_secs(15))).ok()?;
        Some(con)
    }

    pub fn running(&self) -> Vec<usize> {
        (1..=self.procs.len()).filter(|id| self.procs[id - 1].is_some()).collect()
    }

    /// Waits until a write through every running node commits.
    pub fn wait_writable(&self) {
        for id in self.running() {
            wait_until(Duration::from_secs(20), || {
                let mut c = self.try_conn(id)?;
                redis::cmd("SET").arg("__probe").arg(id).query::<String>(&mut c).ok()
            })
            .unwrap_or_else(|| panic!("node {id} never accepted a write"));
        }
    }

    /// The leader as node `via` reports it in INFO.
    pub fn leader(&self, via: usize) -> Option<usize> {
        let mut c = self.try_conn(via)?;
        let info: String = redis::cmd("INFO").query(&mut c).ok()?;
        let line = info.lines().find(|l| l.starts_with("leader_id:"))?;
        line["leader_id:".len()..].trim().parse().ok()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for p in self.procs.iter_mut() {
            if let Some(mut c) = p.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

/// A test PKI's files: a CA, a node certificate for 127.0.0.1 (and localhost) and a client
/// certificate, both signed by the CA.
pub struct Pki {
    pub ca: PathBuf,
    pub node_cert: PathBuf,
    pub node_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

/// Writes a new test PKI into `dir`.
pub fn pki(dir: &std::path::Path) -> Pki {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    // Distinct names: OpenSSL takes a certificate whose issuer is its own subject for a
    // self-signed one.
    ca.distinguished_name.push(DnType::CommonName, "raft-kv test CA");
    let ca = ca.self_signed(&ca_key).unwrap();
    let signed = |cn: &str, names: Vec<String>| {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(names).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
        (cert.pem(), key.serialize_pem())
    };
    let (node_cert, node_key) =
        signed("raft-kv node", vec!["127.0.0.1".into(), "localhost".into()]);
    let (client_cert, client_key) = signed("raft-kv client", vec!["client".into()]);
    let write = |name: &str, pem: &str| {
        let p = dir.join(name);
        std::fs::write(&p, pem).unwrap();
        p
    };
    Pki {
        ca: write("ca.pem", &ca.pem()),
        node_cert: write("node.pem", &node_cert),
        node_key: write("node.key", &node_key),
        client_cert: write("client.pem", &client_cert),
        client_key: write("client.key", &client_key),
    }
}
