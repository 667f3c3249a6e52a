//! Helpers to run the real binaries (`ferromq-nameserver`, `ferromq-broker`, `ferromq`) as
//! child processes on loopback with temporary data directories. The binaries must be built
//! first (`cargo build --workspace --bins`; `scripts/test.sh` does it).

#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod captured_metrics;
pub mod chaos;
pub mod firewall;
pub mod outbox;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use ferromq_client::{Client, Consumer, ConsumerConfig, Message, Producer};

/// Path of a workspace binary: next to the running executable (a binary of this crate, e.g.
/// `ferromq-chaos`) or one directory up (a test executable in `deps/`).
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("executable path");
    let dir = exe.parent().expect("executable directory");
    let candidates = [
        dir.join(name),
        dir.parent().map(|p| p.join(name)).unwrap_or_default(),
    ];
    candidates
        .into_iter()
        .find(|path| path.is_file())
        .unwrap_or_else(|| {
            panic!(
                "{name} not found next to {}: build the binaries first (cargo build --workspace --bins, or scripts/test.sh)",
                exe.display()
            )
        })
}

static NEXT_PORT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// A port nobody listens on right now. Only for addresses that must be known before a process
/// starts (the members of a Raft group must know each other's); everything else binds port 0.
///
/// Taken below the kernel's ephemeral range (32768+), where outgoing connections would grab
/// it between this check and the process binding it; each test process walks its own stretch.
/// Free on every loopback address (`0.0.0.0` is checked).
pub fn free_port() -> u16 {
    let stretch = 10_000 + (std::process::id() % 200) * 100;
    for _ in 0..20_000 {
        let n = NEXT_PORT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let port = 10_000 + (stretch - 10_000 + n) % 22_000;
        if std::net::TcpListener::bind(("0.0.0.0", port as u16)).is_ok() {
            return port as u16;
        }
    }
    panic!("no free port below the ephemeral range")
}

static NEXT_FILE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// A fresh path in `dir` for a process's `--addr-file`.
pub fn addr_file(dir: &Path, name: &str) -> PathBuf {
    let n = NEXT_FILE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    dir.join(format!("{name}-{}-{n}.addr.json", std::process::id()))
}

/// Waits for a process's `--addr-file` and returns it parsed. Servers bind port 0 and report
/// what they got, so parallel tests never race for ports.
pub fn read_addr_file(path: &Path, process: &mut Process) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(text) = std::fs::read_to_string(path) {
            if let Ok(value) = serde_json::from_str(&text) {
                return value;
            }
        }
        if let Ok(Some(status)) = process.child.try_wait() {
            panic!(
                "{} exited with {status} before serving:\n{}",
                process.name,
                process.log()
            );
        }
        assert!(
            Instant::now() < deadline,
            "{} did not report its addresses:\n{}",
            process.name,
            process.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn field(value: &serde_json::Value, key: &str) -> String {
    value[key]
        .as_str()
        .unwrap_or_else(|| panic!("no {key} in {value}"))
        .to_string()
}

/// A child process that is killed when dropped.
pub struct Process {
    pub child: Child,
    pub name: String,
    log: PathBuf,
    exited: bool,
}

impl Process {
    pub fn spawn(name: &str, command: &mut Command, log_dir: &Path) -> Process {
        let log = log_dir.join(format!("{name}.log"));
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let child = command
            .stdout(Stdio::from(log_file.try_clone().unwrap()))
            .stderr(Stdio::from(log_file))
            .env("FERROMQ_LOG", "info,raft=warn")
            .spawn()
            .unwrap_or_else(|err| panic!("cannot start {name}: {err}"));
        Process {
            child,
            name: name.to_string(),
            log,
            exited: false,
        }
    }

    /// True once the process has exited (killed or stopped).
    pub fn has_exited(&self) -> bool {
        self.exited
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL, as a crash.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.exited = true;
    }

    /// Sends a signal by name (`STOP`, `CONT`, `TERM`).
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid().to_string())
            .status()
            .unwrap();
        assert!(status.success(), "kill -{signal} failed");
    }

    /// SIGTERM and wait for a clean exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        self.signal("TERM");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                self.exited = true;
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not stop after SIGTERM",
                self.name
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `ferromq standalone` (a nameserver and a broker in one process) on free loopback ports.
pub struct Standalone {
    pub process: Process,
    pub nameserver: String,
    pub data: tempfile::TempDir,
}

/// Starts `ferromq standalone` and waits until it takes a send.
pub fn start_standalone() -> Standalone {
    let data = tempfile::tempdir().unwrap();
    let file = addr_file(data.path(), "standalone");
    let mut command = Command::new(binary("ferromq"));
    command
        .arg("standalone")
        .arg("--data-dir")
        .arg(data.path().join("data"))
        .args(["--nameserver-listen", "127.0.0.1:0"])
        .args(["--nameserver-admin-listen", "127.0.0.1:0"])
        .args(["--broker-listen", "127.0.0.1:0"])
        .args(["--broker-admin-listen", "127.0.0.1:0"])
        .arg("--addr-file")
        .arg(&file);
    let mut process = Process::spawn("standalone", &mut command, data.path());
    let addresses = read_addr_file(&file, &mut process);
    let nameserver = addresses["nameserver"].as_str().unwrap().to_string();
    wait_http_ok(
        addresses["broker_admin"].as_str().unwrap(),
        "/readyz",
        Duration::from_secs(30),
    );
    // Ready broker; the first send may still race its registration with the nameserver.
    let mut warmed_up = false;
    for _ in 0..200 {
        let out = ferromq(&[
            "--nameserver",
            &nameserver,
            "send",
            "--topic",
            "warmup",
            "--body",
            "x",
        ]);
        if out.status.success() {
            warmed_up = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        warmed_up,
        "standalone never accepted a send:\n{}",
        process.log()
    );
    Standalone {
        process,
        nameserver,
        data,
    }
}

/// A minimal HTTP/1.1 GET over loopback: (status code, body).
pub fn http_get(addr: &str, path: &str) -> std::io::Result<(u16, String)> {
    http_request("GET", addr, path, "", &[])
}

/// A minimal HTTP/1.1 POST of a JSON body over loopback: (status code, body).
pub fn http_post(addr: &str, path: &str, json: &str) -> std::io::Result<(u16, String)> {
    http_request("POST", addr, path, json, &[])
}

/// A minimal HTTP/1.1 request with a JSON body and extra headers: (status code, body).
pub fn http_request(
    method: &str,
    addr: &str,
    path: &str,
    json: &str,
    headers: &[(&str, &str)],
) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let headers: String = headers
        .iter()
        .map(|(name, value)| format!("{name}: {value}\r\n"))
        .collect();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{headers}\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{json}",
        json.len()
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

/// Waits until `GET path` answers 200.
pub fn wait_http_ok(addr: &str, path: &str, timeout: Duration) {
    if let Err(last) = try_wait_http_ok(addr, path, timeout) {
        panic!("http://{addr}{path} did not become ready: {last}");
    }
}

/// Waits until `GET path` answers 200; otherwise the last answer (or error).
pub fn try_wait_http_ok(addr: &str, path: &str, timeout: Duration) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    loop {
        let last = match http_get(addr, path) {
            Ok((200, _)) => return Ok(()),
            Ok((status, body)) => format!("{status} {body}"),
            Err(err) => err.to_string(),
        };
        if Instant::now() > deadline {
            return Err(last);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub struct Nameserver {
    pub process: Process,
    pub addr: String,
    pub admin: String,
}

/// Starts `ferromq-nameserver` on free ports with the given extra environment.
pub fn start_nameserver(log_dir: &Path, env: &[(&str, &str)]) -> Nameserver {
    let file = addr_file(log_dir, "nameserver");
    let mut command = Command::new(binary("ferromq-nameserver"));
    command.args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"]);
    command.arg("--addr-file").arg(&file);
    for (key, value) in env {
        command.env(key, value);
    }
    let mut process = Process::spawn("nameserver", &mut command, log_dir);
    let addresses = read_addr_file(&file, &mut process);
    let (addr, admin) = (field(&addresses, "addr"), field(&addresses, "admin_addr"));
    wait_http_ok(&admin, "/readyz", Duration::from_secs(20));
    Nameserver {
        process,
        addr,
        admin,
    }
}

/// How to run one broker process; kept so it can be restarted on the same ports and data.
pub struct BrokerSpec {
    pub addr: String,
    pub admin: String,
    pub data_dir: PathBuf,
    pub nameserver: String,
    pub env: Vec<(String, String)>,
    pub log_dir: PathBuf,
}

impl BrokerSpec {
    /// Starts the broker on its known ports (a restart).
    fn launch(&self) -> Process {
        let process = self.spawn(&self.addr, &self.admin, None);
        if let Err(last) = try_wait_http_ok(&self.admin, "/readyz", Duration::from_secs(30)) {
            let log = process.log();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            panic!(
                "{} not ready after a restart ({last}):\n{}",
                self.addr,
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        process
    }

    /// Starts the broker on its known ports without waiting for it to be ready (members of a
    /// group that all went down must start together).
    pub fn spawn_only(&self) -> Process {
        self.spawn(&self.addr, &self.admin, None)
    }

    fn spawn(&self, addr: &str, admin: &str, addr_file: Option<&Path>) -> Process {
        let mut command = Command::new(binary("ferromq-broker"));
        command.args([
            "--listen",
            addr,
            "--admin-listen",
            admin,
            "--nameserver",
            &self.nameserver,
        ]);
        command.arg("--data-dir").arg(&self.data_dir);
        if let Some(file) = addr_file {
            command.arg("--addr-file").arg(file);
        }
        for (key, value) in &self.env {
            command.env(key, value);
        }
        let name = self.data_dir.file_name().map_or("broker".to_string(), |n| {
            format!("broker-{}", n.to_string_lossy())
        });
        Process::spawn(&name, &mut command, &self.log_dir)
    }
}

pub struct Broker {
    pub spec: BrokerSpec,
    pub process: Process,
}

impl Broker {
    /// Starts `ferromq-broker` on free ports with `data_dir`.
    pub fn start(
        data_dir: &Path,
        nameserver: &str,
        log_dir: &Path,
        env: &[(&str, &str)],
    ) -> Broker {
        Broker::start_with_admin(data_dir, nameserver, log_dir, env, "127.0.0.1:0")
    }

    /// Like [`Broker::start`], the admin API listening on `admin_listen`.
    pub fn start_with_admin(
        data_dir: &Path,
        nameserver: &str,
        log_dir: &Path,
        env: &[(&str, &str)],
        admin_listen: &str,
    ) -> Broker {
        let mut spec = BrokerSpec {
            addr: String::new(),
            admin: String::new(),
            data_dir: data_dir.to_path_buf(),
            nameserver: nameserver.to_string(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            log_dir: log_dir.to_path_buf(),
        };
        let file = addr_file(log_dir, "broker");
        let mut process = spec.spawn("127.0.0.1:0", admin_listen, Some(&file));
        let addresses = read_addr_file(&file, &mut process);
        spec.addr = field(&addresses, "addr");
        spec.admin = field(&addresses, "admin_addr");
        wait_http_ok(&spec.admin, "/readyz", Duration::from_secs(30));
        Broker { spec, process }
    }

    /// Kills the process if it still runs and starts it again on the same ports and data.
    pub fn restart(&mut self) {
        self.process.kill9();
        self.process = self.spec.launch();
    }
}

/// Starts `size` brokers as one Raft group named `group`, each with its own data directory
/// under `root`, and waits until every member is ready (which needs a leader, so all start at
/// once).
pub fn start_group(
    group: &str,
    size: u64,
    root: &Path,
    nameserver: &str,
    env: &[(&str, &str)],
) -> Vec<Broker> {
    let hosts = vec!["127.0.0.1".to_string(); size as usize];
    start_group_on(group, &hosts, root, nameserver, env)
}

/// Like [`start_group`], member `i` listening (client and peer ports) on `hosts[i]`, and
/// connecting to its peers from there: with one loopback address per member, a firewall rule
/// on an address cuts that member off.
pub fn start_group_on(
    group: &str,
    hosts: &[String],
    root: &Path,
    nameserver: &str,
    env: &[(&str, &str)],
) -> Vec<Broker> {
    let ports: Vec<(u16, u16)> = hosts.iter().map(|_| (free_port(), free_port())).collect();
    let peers: Vec<String> = ports
        .iter()
        .zip(hosts)
        .enumerate()
        .map(|(i, ((client, raft), host))| {
            format!(
                r#"{{ id = {}, raft_addr = "{host}:{raft}", client_addr = "{host}:{client}" }}"#,
                i + 1
            )
        })
        .collect();
    let peers = format!("[{}]", peers.join(", "));
    let mut members = Vec::new();
    for (i, ((client, raft), host)) in ports.iter().zip(hosts).enumerate() {
        let member = MemberSpec {
            group,
            node_id: i as u64 + 1,
            client_addr: format!("{host}:{client}"),
            raft_addr: format!("{host}:{raft}"),
            peers: peers.clone(),
            join: false,
        };
        members.push(member.spawn(root, nameserver, env));
    }
    for member in &members {
        wait_http_ok(&member.spec.admin, "/readyz", Duration::from_secs(30));
    }
    members
}

impl Broker {
    /// This member's entry for `raft.peers`, from how it was started by [`start_group`].
    pub fn peer_entry(&self) -> String {
        let env = |key: &str| {
            self.spec
                .env
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.clone())
                .expect("a member started by start_group")
        };
        format!(
            r#"{{ id = {}, raft_addr = "{}", client_addr = "{}" }}"#,
            env("FERROMQ_NODE_ID"),
            env("FERROMQ_RAFT__LISTEN"),
            self.spec.addr
        )
    }
}

/// Starts a new broker with `node_id` that joins the running group of `members` (it waits to
/// be added through the leader's `POST /v1/raft/members`, so it is not ready yet). Returns it
/// with its raft address.
pub fn join_group(
    group: &str,
    node_id: u64,
    members: &[&Broker],
    root: &Path,
    nameserver: &str,
    env: &[(&str, &str)],
) -> (Broker, String) {
    let (client, raft) = (free_port(), free_port());
    let raft_addr = format!("127.0.0.1:{raft}");
    let mut peers: Vec<String> = members.iter().map(|m| m.peer_entry()).collect();
    peers.push(format!(
        r#"{{ id = {node_id}, raft_addr = "{raft_addr}", client_addr = "127.0.0.1:{client}" }}"#
    ));
    let member = MemberSpec {
        group,
        node_id,
        client_addr: format!("127.0.0.1:{client}"),
        raft_addr: raft_addr.clone(),
        peers: format!("[{}]", peers.join(", ")),
        join: true,
    };
    (member.spawn(root, nameserver, env), raft_addr)
}

/// One member of a broker group, as the group helpers start it.
struct MemberSpec<'a> {
    group: &'a str,
    node_id: u64,
    client_addr: String,
    raft_addr: String,
    /// The `raft.peers` TOML list.
    peers: String,
    join: bool,
}

impl MemberSpec<'_> {
    /// Starts the member's process and waits for its addresses (not for it to be ready).
    fn spawn(self, root: &Path, nameserver: &str, env: &[(&str, &str)]) -> Broker {
        let mut member_env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        member_env.extend([
            ("FERROMQ_GROUP".to_string(), self.group.to_string()),
            ("FERROMQ_NODE_ID".to_string(), self.node_id.to_string()),
            ("FERROMQ_RAFT__LISTEN".to_string(), self.raft_addr),
            ("FERROMQ_RAFT__PEERS".to_string(), self.peers),
        ]);
        if self.join {
            member_env.push(("FERROMQ_RAFT__JOIN".to_string(), "true".to_string()));
        }
        let mut spec = BrokerSpec {
            addr: self.client_addr,
            admin: String::new(),
            data_dir: root.join(format!("{}-{}", self.group, self.node_id)),
            nameserver: nameserver.to_string(),
            env: member_env,
            log_dir: root.to_path_buf(),
        };
        let file = addr_file(root, "member");
        let mut process = spec.spawn(&spec.addr, "127.0.0.1:0", Some(&file));
        let addresses = read_addr_file(&file, &mut process);
        spec.admin = field(&addresses, "admin_addr");
        Broker { spec, process }
    }
}

/// `/v1/raft` of a broker, or `None` if it does not answer (down, starting, paused).
pub fn try_raft_status(broker: &Broker) -> Option<serde_json::Value> {
    let (status, body) = http_get(&broker.spec.admin, "/v1/raft").ok()?;
    (status == 200)
        .then(|| serde_json::from_str(&body).ok())
        .flatten()
}

/// The member of `group` that reports itself leader, among those running and answering.
pub fn find_leader(group: &[Broker]) -> Option<usize> {
    group.iter().position(|b| {
        !b.process.has_exited()
            && try_raft_status(b).is_some_and(|status| status["role"] == "Leader")
    })
}

/// A bare protocol connection (handshake done), for speaking to a server below the SDK.
pub async fn raw_connection(
    addr: &str,
    client_id: &str,
) -> std::io::Result<ferromq_transport::Connection> {
    ferromq_transport::Connection::connect(
        addr,
        client_id,
        std::sync::Arc::new(ferromq_transport::TransportConfig::default()),
        std::sync::Arc::new(ferromq_transport::RejectAll),
    )
    .await
    .map_err(std::io::Error::other)
}

/// `/v1/raft` of a broker, parsed.
pub fn raft_status(broker: &Broker) -> serde_json::Value {
    let (status, body) = http_get(&broker.spec.admin, "/v1/raft").expect("admin endpoint answers");
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).expect("json")
}

/// Sends `<prefix>-0` … `<prefix>-<count - 1>` to `topic`, one at a time; each must succeed.
pub async fn send_numbered(producer: &Producer, topic: &str, prefix: &str, count: usize) {
    for i in 0..count {
        producer
            .send(Message::new(topic, format!("{prefix}-{i}")))
            .await
            .unwrap_or_else(|err| panic!("sending {prefix}-{i} to {topic}: {err}"));
    }
}

/// Joins `group` on `topic` (heartbeats every 300 ms) and receives until `count` distinct
/// bodies arrived, each within 20 s. Delivery is at least once (a rebalance may hand a message
/// out again), so distinct bodies are counted. Returns the consumer, still a member.
pub async fn consume_distinct(client: &Client, group: &str, topic: &str, count: usize) -> Consumer {
    let mut consumer = client
        .consumer(group)
        .subscribe(topic, "*")
        .config(ConsumerConfig {
            heartbeat_interval_ms: 300,
            ..ConsumerConfig::default()
        })
        .build()
        .await
        .unwrap_or_else(|err| panic!("joining {group} on {topic}: {err}"));
    let mut received = std::collections::BTreeSet::new();
    while received.len() < count {
        let message = within(Duration::from_secs(20), consumer.recv())
            .await
            .unwrap_or_else(|| panic!("{group} on {topic}: the consumer stopped"));
        received.insert(message.body.to_vec());
    }
    consumer
}

/// A client of the given nameserver with a short request timeout.
pub async fn client(nameserver: &str) -> Client {
    Client::builder()
        .name_servers([nameserver])
        .request_timeout(Duration::from_secs(5))
        .connect()
        .await
        .expect("client connects to the nameserver")
}

/// Waits until the nameserver routes `topic` (or the auto-create route) to some broker.
pub async fn wait_for_route(client: &Client, topic: &str, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while client.fetch_route(topic).await.is_err() {
        assert!(Instant::now() < deadline, "no route for {topic}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Messages the queues of `topic` hold, over every broker group (by the lag of `group`, which
/// need not exist).
pub async fn stored_messages(client: &Client, group: &str, topic: &str) -> u64 {
    client
        .lag(group, topic)
        .await
        .expect("the brokers answer a lag query")
        .iter()
        .map(|lag| lag.queue.max_offset - lag.queue.min_offset)
        .sum()
}

/// Runs the `ferromq` CLI and returns its output.
pub fn ferromq(args: &[&str]) -> Output {
    Command::new(binary("ferromq"))
        .args(args)
        .env("FERROMQ_LOG", "warn")
        .output()
        .expect("ferromq runs")
}

/// Polls `done` every 20 ms until it holds, failing the test after `timeout`.
pub async fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Awaits `future`, failing the test if it takes longer than `timeout`.
pub async fn within<F: std::future::Future>(timeout: Duration, future: F) -> F::Output {
    tokio::time::timeout(timeout, future)
        .await
        .unwrap_or_else(|_| panic!("no result within {timeout:?}"))
}
