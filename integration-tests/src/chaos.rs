//! A chaos run against real processes: a nameserver and a three-member broker group, producers
//! and two consumer groups under load, faults injected on a schedule, then a final drain and a
//! check of the recorded history.
//!
//! Faults, in rotation: `kill -9` of the leader (restarted a little later), isolation of the
//! leader from its peers and clients (iptables), SIGSTOP of the leader for longer than the
//! election timeout, `kill -9` of a follower whose newest segment is then truncated and
//! bit-flipped at the tail (it must repair from its peers), 30 % packet loss towards a follower,
//! `kill -9` of a follower; the long version also kills all three members at once. Network
//! faults need root and iptables (see `firewall`); without them they are skipped and listed as
//! such. The checker reports:
//! - lost: acknowledged sends a consumer group never received (must be 0);
//! - unexpected: messages received that were never sent (must be 0);
//! - duplicates: deliveries of the same message to one group beyond the first (redelivery after
//!   faults is allowed in at-least-once, and counted);
//! - inconsistent offsets: two messages seen at one (queue, offset) (must be 0);
//! - order violations: a producer's acknowledged sends to one queue whose offsets do not grow
//!   with the send order (must be 0);
//! - divergence: replicas that hold different messages at the same queue offsets (must be 0);
//! - failover time: from each leader kill to the next acknowledged send (p99 reported).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use ferromq_client::{ConsumerConfig, Message, MessageId};
use ferromq_protocol::headers::{PullRequest, PullResponse};
use ferromq_protocol::message::decode_pulled;
use ferromq_protocol::RequestCode;

use crate::firewall::Firewall;
use crate::{client, find_leader, start_group_on, start_nameserver, Broker};

const TOPIC: &str = "chaos";
const QUEUES: u32 = 8;

#[derive(Debug, Clone)]
pub struct ChaosConfig {
    /// How long faults are injected.
    pub duration: Duration,
    /// Time between the starts of two faults.
    pub fault_interval: Duration,
    pub producers: u32,
    /// Also kill all members at once (the long version).
    pub kill_all: bool,
    /// How long the final drain may take.
    pub drain_timeout: Duration,
    /// Isolate the leader and drop packets to a follower (needs root and iptables).
    pub network_faults: bool,
}

impl Default for ChaosConfig {
    fn default() -> Self {
        ChaosConfig {
            duration: Duration::from_secs(600),
            fault_interval: Duration::from_secs(30),
            producers: 4,
            kill_all: true,
            drain_timeout: Duration::from_secs(60),
            network_faults: true,
        }
    }
}

/// What the checker found.
#[derive(Debug, Default, Clone)]
pub struct ChaosReport {
    pub attempted: usize,
    pub acknowledged: usize,
    pub failed_sends: usize,
    pub faults: Vec<String>,
    pub lost: usize,
    pub unexpected: usize,
    pub duplicates: usize,
    pub inconsistent_offsets: usize,
    pub order_violations: usize,
    pub divergence: usize,
    pub failover_ms: Vec<u64>,
    /// Leader losses after which no send was acknowledged again.
    pub unrecovered: usize,
    /// Faults that found no leader to act on, and a group left without a leader after healing.
    pub unavailable: usize,
    /// Messages stored twice (a retried send the broker did not recognise).
    pub stored_duplicates: usize,
    /// From a kill of all members to the next acknowledged send.
    pub recovery_ms: Vec<u64>,
    pub samples: Vec<String>,
}

impl ChaosReport {
    pub fn failover_p99_ms(&self) -> u64 {
        let mut sorted = self.failover_ms.clone();
        sorted.sort_unstable();
        match sorted.len() {
            0 => 0,
            n => sorted[((n as f64 * 0.99).ceil() as usize).clamp(1, n) - 1],
        }
    }

    pub fn passed(&self) -> bool {
        self.lost == 0
            && self.order_violations == 0
            && self.divergence == 0
            && self.unexpected == 0
            && self.inconsistent_offsets == 0
            && self.stored_duplicates == 0
            && self.unrecovered == 0
            && self.unavailable == 0
    }

    /// The one-line summary `scripts/chaos.sh` ends with.
    pub fn summary_line(&self) -> String {
        format!(
            "lost={} unexpected={} duplicates={} order_violations={} divergence={} failover_p99_ms={}",
            self.lost,
            self.unexpected,
            self.duplicates,
            self.order_violations,
            self.divergence,
            self.failover_p99_ms()
        )
    }
}

impl fmt::Display for ChaosReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "faults injected        {}", self.faults.len())?;
        for fault in &self.faults {
            writeln!(f, "  {fault}")?;
        }
        writeln!(f, "sends attempted        {}", self.attempted)?;
        writeln!(f, "sends acknowledged     {}", self.acknowledged)?;
        writeln!(f, "sends failed/unknown   {}", self.failed_sends)?;
        writeln!(f, "lost                   {}", self.lost)?;
        writeln!(f, "unexpected             {}", self.unexpected)?;
        writeln!(f, "duplicate deliveries   {}", self.duplicates)?;
        writeln!(f, "inconsistent offsets   {}", self.inconsistent_offsets)?;
        writeln!(f, "order violations       {}", self.order_violations)?;
        writeln!(f, "replica divergence     {}", self.divergence)?;
        writeln!(f, "stored duplicates      {}", self.stored_duplicates)?;
        writeln!(f, "unrecovered failovers  {}", self.unrecovered)?;
        writeln!(f, "unavailable            {}", self.unavailable)?;
        writeln!(f, "failovers (ms)         {:?}", self.failover_ms)?;
        writeln!(
            f,
            "recoveries from total outage (ms) {:?}",
            self.recovery_ms
        )?;
        for sample in self.samples.iter().take(32) {
            writeln!(f, "  {sample}")?;
        }
        write!(f, "{}", self.summary_line())
    }
}

#[derive(Debug, Clone)]
struct Ack {
    producer: u32,
    seq: u64,
    id: MessageId,
    body: String,
    group: String,
    queue: u32,
    offset: u64,
    at: Instant,
}

#[derive(Default)]
struct History {
    attempted: BTreeMap<MessageId, String>,
    attempted_bodies: BTreeSet<String>,
    acks: Vec<Ack>,
    failed: usize,
    /// (consumer group, message id, broker group, queue, offset, body)
    deliveries: Vec<(String, MessageId, String, u32, u64, String)>,
}

fn body(producer: u32, seq: u64) -> String {
    format!("p{producer}-s{seq}-{}", "x".repeat(64))
}

/// Runs the whole scenario; `dir` holds data and logs.
pub async fn run(config: ChaosConfig, dir: &Path) -> ChaosReport {
    let nameserver = start_nameserver(dir, &[]);
    let firewall = if config.network_faults {
        Firewall::new()
            .map_err(|reason| eprintln!("network faults skipped: {reason}"))
            .ok()
    } else {
        None
    };
    let hosts = match firewall {
        Some(_) => Firewall::member_hosts(3),
        None => vec!["127.0.0.1".to_string(); 3],
    };
    let group = Arc::new(Mutex::new(start_group_on(
        "chaos",
        &hosts,
        dir,
        &nameserver.addr,
        &[],
    )));
    let client = client(&nameserver.addr).await;
    client
        .create_topic(TOPIC, QUEUES)
        .await
        .expect("topic created");

    let history = Arc::new(Mutex::new(History::default()));
    let stop_producing = Arc::new(AtomicBool::new(false));
    let stop_consuming = tokio_util::sync::CancellationToken::new();

    let mut producers = Vec::new();
    for p in 0..config.producers {
        let (producer, history, stop) =
            (client.producer(), history.clone(), stop_producing.clone());
        producers.push(tokio::spawn(async move {
            let mut seq = 0;
            while !stop.load(Ordering::Relaxed) {
                let text = body(p, seq);
                let message = Message::new(TOPIC, text.clone());
                history
                    .lock()
                    .unwrap()
                    .attempted_bodies
                    .insert(text.clone());
                match producer.send(message).await {
                    Ok(receipt) => {
                        let mut history = history.lock().unwrap();
                        history.attempted.insert(receipt.message_id, text.clone());
                        history.acks.push(Ack {
                            producer: p,
                            seq,
                            id: receipt.message_id,
                            body: text,
                            group: receipt.broker_group,
                            queue: receipt.queue_id,
                            offset: receipt.queue_offset,
                            at: Instant::now(),
                        });
                    }
                    Err(_) => {
                        history.lock().unwrap().failed += 1;
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
                seq += 1;
            }
        }));
    }

    let mut consumers = Vec::new();
    for (name, from_followers) in [("auditors", false), ("follower-readers", true)] {
        let consumer = client
            .consumer(name)
            .subscribe(TOPIC, "*")
            .config(ConsumerConfig {
                read_from_followers: from_followers,
                commit_interval_ms: 1_000,
                ..ConsumerConfig::default()
            })
            .build()
            .await
            .expect("consumer starts");
        let (history, stop) = (history.clone(), stop_consuming.clone());
        consumers.push(tokio::spawn(async move {
            let mut consumer = consumer;
            loop {
                let message = tokio::select! {
                    message = consumer.recv() => match message {
                        Some(message) => message,
                        None => break,
                    },
                    _ = stop.cancelled() => break,
                };
                history.lock().unwrap().deliveries.push((
                    name.to_string(),
                    message.id,
                    message.broker_group.clone(),
                    message.queue_id,
                    message.queue_offset,
                    String::from_utf8_lossy(&message.body).into_owned(),
                ));
            }
            let _ = consumer.commit().await;
            let _ = consumer.shutdown().await;
        }));
    }

    // Faults.
    let mut faults = Vec::new();
    // When a leader was lost, and when every member was.
    let mut kills: Vec<Instant> = Vec::new();
    let mut outages: Vec<Instant> = Vec::new();
    let started = Instant::now();
    let mut round = 0usize;
    tokio::time::sleep(config.fault_interval / 2).await;
    while started.elapsed() < config.duration {
        let fault = fault_for(round, config.kill_all, firewall.is_some());
        round += 1;
        let description = inject(
            fault,
            &group,
            firewall.as_ref(),
            config.fault_interval,
            &mut kills,
            &mut outages,
        )
        .await;
        faults.push(format!(
            "{:>6.1}s {description}",
            started.elapsed().as_secs_f64()
        ));
        // Faults start every interval, half an interval after the run began.
        let next = started + config.fault_interval / 2 + config.fault_interval * round as u32;
        if let Some(wait) = next.checked_duration_since(Instant::now()) {
            tokio::time::sleep(wait).await;
        }
    }
    if let Some(firewall) = &firewall {
        firewall.heal();
    }
    let healed = heal(&group).await;

    // Keep producing briefly on the healed group, then drain.
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop_producing.store(true, Ordering::Relaxed);
    for producer in producers {
        let _ = producer.await;
    }
    let drain_deadline = Instant::now() + config.drain_timeout;
    loop {
        if all_delivered(&history) || Instant::now() > drain_deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stop_consuming.cancel();
    for consumer in consumers {
        let _ = consumer.await;
    }

    let members: Vec<String> = group
        .lock()
        .unwrap()
        .iter()
        .map(|b| b.spec.addr.clone())
        .collect();
    let replicas = read_replicas(&members, TOPIC, QUEUES).await;
    let mut report = {
        let history = history.lock().unwrap();
        check(&history, &replicas, &kills, &outages)
    };
    report.unavailable =
        faults.iter().filter(|f| f.contains("UNAVAILABLE")).count() + usize::from(!healed);
    report.faults = faults;
    client.shutdown().await;
    drop(nameserver);
    report
}

#[derive(Debug, Clone, Copy)]
enum Fault {
    KillLeader,
    IsolateLeader,
    PauseLeader,
    TearFollowerTail,
    LoseFollowerPackets,
    KillFollower,
    KillAll,
}

fn fault_for(round: usize, kill_all: bool, network: bool) -> Fault {
    // A network fault every other round (with 30 s rounds, a partition or loss every minute).
    let rotation: Vec<Fault> = [
        Fault::KillLeader,
        Fault::IsolateLeader,
        Fault::PauseLeader,
        Fault::LoseFollowerPackets,
        Fault::TearFollowerTail,
        Fault::IsolateLeader,
        Fault::KillFollower,
        Fault::KillAll,
    ]
    .into_iter()
    .filter(|fault| match fault {
        Fault::IsolateLeader | Fault::LoseFollowerPackets => network,
        Fault::KillAll => kill_all,
        _ => true,
    })
    .collect();
    rotation[round % rotation.len()]
}

/// The host part of a member's client address (its own loopback address under a firewall).
fn host_of(broker: &Broker) -> String {
    broker
        .spec
        .addr
        .rsplit_once(':')
        .map_or_else(|| broker.spec.addr.clone(), |(host, _)| host.to_string())
}

/// What a crash in the middle of writing leaves, and worse: the newest segment loses up to
/// 4 KiB at its end and a bit flips in the 4 KiB before that. Returns what was done.
fn tear_tail(broker: &Broker, round: usize) -> String {
    let log_dir = broker.spec.data_dir.join("log");
    let newest = std::fs::read_dir(&log_dir).ok().and_then(|entries| {
        entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.file_name().is_some_and(|n| n.len() == 20))
            .max()
    });
    let Some(segment) = newest else {
        return "no segment to tear".into();
    };
    let Ok(mut bytes) = std::fs::read(&segment) else {
        return "segment unreadable".into();
    };
    let cut = (1 + round * 997 % 4096).min(bytes.len());
    bytes.truncate(bytes.len() - cut);
    if !bytes.is_empty() {
        let at = bytes.len() - 1 - (round * 131 % 4096).min(bytes.len() - 1);
        bytes[at] ^= 0x20;
    }
    match std::fs::write(&segment, &bytes) {
        Ok(()) => format!("cut {cut} bytes and flipped a bit"),
        Err(err) => format!("could not tear the tail: {err}"),
    }
}

async fn wait_for_leader(group: &Arc<Mutex<Vec<Broker>>>) -> Option<usize> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        let group = group.clone();
        if let Ok(Some(leader)) =
            tokio::task::spawn_blocking(move || find_leader(&group.lock().unwrap())).await
        {
            return Some(leader);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

async fn blocking<T: Send + 'static>(
    group: &Arc<Mutex<Vec<Broker>>>,
    work: impl FnOnce(&mut Vec<Broker>) -> T + Send + 'static,
) -> T {
    let group = group.clone();
    tokio::task::spawn_blocking(move || work(&mut group.lock().unwrap()))
        .await
        .expect("fault task")
}

async fn inject(
    fault: Fault,
    group: &Arc<Mutex<Vec<Broker>>>,
    firewall: Option<&Firewall>,
    interval: Duration,
    kills: &mut Vec<Instant>,
    outages: &mut Vec<Instant>,
) -> String {
    let Some(leader) = wait_for_leader(group).await else {
        return "UNAVAILABLE: no leader to act on".into();
    };
    let outage = (interval / 3).max(Duration::from_secs(3));
    match fault {
        Fault::KillLeader => {
            blocking(group, move |g| g[leader].process.kill9()).await;
            kills.push(Instant::now());
            tokio::time::sleep(outage).await;
            blocking(group, move |g| g[leader].restart()).await;
            format!("kill -9 leader {} (restarted after {outage:?})", leader + 1)
        }
        Fault::IsolateLeader => {
            let host = blocking(group, move |g| host_of(&g[leader])).await;
            let Some(firewall) = firewall else {
                return "isolation skipped (no firewall)".into();
            };
            firewall.isolate(&host);
            kills.push(Instant::now());
            tokio::time::sleep(outage).await;
            firewall.heal();
            format!("isolated leader {} ({host}) for {outage:?}", leader + 1)
        }
        Fault::LoseFollowerPackets => {
            let follower = (leader + 2) % 3;
            let host = blocking(group, move |g| host_of(&g[follower])).await;
            let Some(firewall) = firewall else {
                return "packet loss skipped (no firewall)".into();
            };
            firewall.lose(&host, 0.3);
            tokio::time::sleep(outage).await;
            firewall.heal();
            format!(
                "30 % packet loss to follower {} ({host}) for {outage:?}",
                follower + 1
            )
        }
        Fault::TearFollowerTail => {
            let follower = (leader + 1) % 3;
            let round = kills.len() + outages.len();
            let torn = blocking(group, move |g| {
                g[follower].process.kill9();
                tear_tail(&g[follower], round)
            })
            .await;
            tokio::time::sleep(outage).await;
            blocking(group, move |g| g[follower].restart()).await;
            format!(
                "kill -9 follower {}, newest segment torn ({torn}), restarted after {outage:?}",
                follower + 1
            )
        }
        Fault::PauseLeader => {
            blocking(group, move |g| g[leader].process.signal("STOP")).await;
            kills.push(Instant::now());
            tokio::time::sleep(outage).await;
            blocking(group, move |g| g[leader].process.signal("CONT")).await;
            format!("SIGSTOP leader {} for {outage:?}", leader + 1)
        }
        Fault::KillFollower => {
            let follower = (leader + 1) % 3;
            blocking(group, move |g| g[follower].process.kill9()).await;
            tokio::time::sleep(outage).await;
            blocking(group, move |g| g[follower].restart()).await;
            format!(
                "kill -9 follower {} (restarted after {outage:?})",
                follower + 1
            )
        }
        Fault::KillAll => {
            blocking(group, |g| g.iter_mut().for_each(|b| b.process.kill9())).await;
            outages.push(Instant::now());
            tokio::time::sleep(Duration::from_secs(1)).await;
            restart_all(group).await;
            "kill -9 of all three members at once".into()
        }
    }
}

/// Restarts every member that is down, all at once (a member waits for a quorum to be ready).
async fn restart_all(group: &Arc<Mutex<Vec<Broker>>>) {
    blocking(group, |g| {
        let down: Vec<usize> = (0..g.len())
            .filter(|i| g[*i].process.has_exited())
            .collect();
        let processes: Vec<(usize, crate::Process)> =
            down.iter().map(|i| (*i, g[*i].spec.spawn_only())).collect();
        for (i, process) in processes {
            g[i].process = process;
        }
        for i in down {
            crate::wait_http_ok(&g[i].spec.admin, "/readyz", Duration::from_secs(60));
        }
    })
    .await;
}

/// Restarts whatever is down; false if the group then has no leader.
async fn heal(group: &Arc<Mutex<Vec<Broker>>>) -> bool {
    restart_all(group).await;
    wait_for_leader(group).await.is_some()
}

fn all_delivered(history: &Arc<Mutex<History>>) -> bool {
    let history = history.lock().unwrap();
    let acked: BTreeSet<MessageId> = history.acks.iter().map(|a| a.id).collect();
    ["auditors", "follower-readers"].iter().all(|group| {
        let seen: BTreeSet<MessageId> = history
            .deliveries
            .iter()
            .filter(|d| d.0 == *group)
            .map(|d| d.1)
            .collect();
        acked.is_subset(&seen)
    })
}

/// Every message each replica holds, by queue: the sequence of ids from offset 0. `None` for a
/// replica that could not be read completely (which the checker counts against the run).
pub async fn read_replicas(
    members: &[String],
    topic: &str,
    queues: u32,
) -> Vec<Option<BTreeMap<u32, Vec<MessageId>>>> {
    let mut replicas = Vec::new();
    for addr in members {
        replicas.push(read_replica(addr, topic, queues).await);
    }
    replicas
}

async fn read_replica(
    addr: &str,
    topic: &str,
    queues: u32,
) -> Option<BTreeMap<u32, Vec<MessageId>>> {
    let connection = crate::raw_connection(addr, "chaos-auditor").await.ok()?;
    let mut result = BTreeMap::new();
    for queue_id in 0..queues {
        let mut ids = Vec::new();
        let mut offset = 0;
        loop {
            let request = PullRequest {
                sql: None,
                group: "chaos-auditor".into(),
                topic: topic.into(),
                queue_id,
                offset,
                max_messages: 256,
                max_bytes: 4 << 20,
                max_wait_ms: 0,
                tag_hashes: Vec::new(),
            };
            let response = connection
                .request(RequestCode::Pull, &request, Bytes::new())
                .await
                .ok()?;
            let (header, body) = response.decode_with_body::<PullResponse>().ok()?;
            let messages = decode_pulled(body).ok()?;
            if messages.is_empty() {
                break;
            }
            ids.extend(messages.iter().map(|m| m.record.id));
            offset = header.next_offset;
        }
        result.insert(queue_id, ids);
    }
    connection.close();
    Some(result)
}

fn check(
    history: &History,
    replicas: &[Option<BTreeMap<u32, Vec<MessageId>>>],
    kills: &[Instant],
    outages: &[Instant],
) -> ChaosReport {
    let mut report = ChaosReport {
        attempted: history.attempted_bodies.len(),
        acknowledged: history.acks.len(),
        failed_sends: history.failed,
        ..ChaosReport::default()
    };
    // Lost: acknowledged but never delivered to a group.
    for group in ["auditors", "follower-readers"] {
        let seen: BTreeSet<MessageId> = history
            .deliveries
            .iter()
            .filter(|d| d.0 == group)
            .map(|d| d.1)
            .collect();
        for ack in history.acks.iter().filter(|a| !seen.contains(&a.id)) {
            report.lost += 1;
            report.samples.push(format!(
                "lost ({group}): {} {:?} at queue {} offset {}",
                ack.id, ack.body, ack.queue, ack.offset
            ));
        }
    }
    // Unexpected: delivered but never sent.
    for delivery in &history.deliveries {
        if !history.attempted_bodies.contains(&delivery.5) {
            report.unexpected += 1;
            report
                .samples
                .push(format!("unexpected: {} body {:?}", delivery.1, delivery.5));
        }
    }
    // Duplicates per group, and one id per (queue, offset).
    let mut seen_once: HashMap<(String, MessageId), usize> = HashMap::new();
    let mut at_offset: HashMap<(String, u32, u64), MessageId> = HashMap::new();
    for (group, id, broker_group, queue, offset, _) in &history.deliveries {
        *seen_once.entry((group.clone(), *id)).or_default() += 1;
        if let Some(other) = at_offset.insert((broker_group.clone(), *queue, *offset), *id) {
            if other != *id {
                report.inconsistent_offsets += 1;
                report.samples.push(format!(
                    "inconsistent: queue {queue} offset {offset} holds {other} and {id}"
                ));
            }
        }
    }
    report.duplicates = seen_once.values().map(|n| n - 1).sum();
    // Order: per producer and queue, offsets grow with the send order.
    let mut by_producer_queue: BTreeMap<(u32, String, u32), Vec<&Ack>> = BTreeMap::new();
    for ack in &history.acks {
        by_producer_queue
            .entry((ack.producer, ack.group.clone(), ack.queue))
            .or_default()
            .push(ack);
    }
    for acks in by_producer_queue.values_mut() {
        acks.sort_by_key(|a| a.seq);
        for pair in acks.windows(2) {
            if pair[1].offset <= pair[0].offset {
                report.order_violations += 1;
                report.samples.push(format!(
                    "order: producer {} sends {} then {} got offsets {} then {} in queue {}",
                    pair[0].producer,
                    pair[0].seq,
                    pair[1].seq,
                    pair[0].offset,
                    pair[1].offset,
                    pair[0].queue
                ));
            }
        }
    }
    // Divergence: every replica readable, all holding the same messages at the same offsets;
    // and no replica stores one message twice.
    let readable: Vec<&BTreeMap<u32, Vec<MessageId>>> = replicas.iter().flatten().collect();
    if readable.len() < 3 {
        report.divergence += 1;
        report.samples.push(format!(
            "only {} of 3 replicas could be read completely",
            readable.len()
        ));
    }
    if let Some((first, rest)) = readable.split_first() {
        for (r, replica) in rest.iter().enumerate() {
            for (queue, ids) in first.iter() {
                let other = replica.get(queue).cloned().unwrap_or_default();
                if *ids != other {
                    report.divergence += 1;
                    report.samples.push(format!(
                        "divergence: queue {queue}: one replica holds {} messages, replica {} holds {}",
                        ids.len(),
                        r + 2,
                        other.len()
                    ));
                }
            }
        }
        for ids in first.values() {
            let unique: BTreeSet<&MessageId> = ids.iter().collect();
            report.stored_duplicates += ids.len() - unique.len();
        }
    }
    // Failover: from each leader loss to the next acknowledged send; the same for outages.
    let next_ack_ms = |since: &Instant| {
        history
            .acks
            .iter()
            .map(|a| a.at)
            .filter(|at| at > since)
            .min()
            .map(|next| next.duration_since(*since).as_millis() as u64)
    };
    report.failover_ms = kills.iter().filter_map(next_ack_ms).collect();
    report.recovery_ms = outages.iter().filter_map(next_ack_ms).collect();
    report.unrecovered =
        kills.len() + outages.len() - report.failover_ms.len() - report.recovery_ms.len();
    report
}
