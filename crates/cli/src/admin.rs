//! `ferromq admin`: the brokers' admin HTTP API from the command line. Tables by default,
//! `--json` for scripts. The broker asked is `--admin HOST:PORT`, or else the leader of
//! `--broker-group` (the first group by default) as the nameserver's cluster view names it.

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use ferromq_client::Client;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Debug, Args)]
pub struct AdminArgs {
    /// Admin address of the broker to ask (HOST:PORT); default: the leader of --broker-group.
    #[arg(long, global = true)]
    admin: Option<String>,
    /// The broker group whose leader to ask when --admin is not given (default: the first).
    #[arg(long, global = true)]
    broker_group: Option<String>,
    /// Print the API's JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: AdminCommand,
}

#[derive(Debug, Subcommand)]
enum AdminCommand {
    /// Every broker the nameserver knows: group, member, role, addresses, last heartbeat.
    Cluster,
    /// Topics of the broker group.
    #[command(subcommand)]
    Topic(TopicCommand),
    /// Consumer groups: members, lag, offset resets.
    #[command(subcommand)]
    Group(GroupCommand),
    /// Messages by id or key, and their traces.
    #[command(subcommand)]
    Message(MessageCommand),
    /// A consumer group's dead letters.
    #[command(subcommand)]
    Dlq(DlqCommand),
    /// The broker group's Raft state and leadership.
    #[command(subcommand)]
    Raft(RaftCommand),
}

#[derive(Debug, Subcommand)]
enum TopicCommand {
    List,
}

#[derive(Debug, Subcommand)]
enum GroupCommand {
    List,
    /// Lag per topic and queue.
    Lag {
        group: String,
        #[arg(long)]
        topic: Option<String>,
    },
    /// Move a running group's offsets of a topic.
    ResetOffset {
        group: String,
        #[arg(long)]
        topic: String,
        /// `first` or `last`.
        #[arg(long, conflicts_with_all = ["timestamp_ms", "offset"])]
        to: Option<String>,
        /// The first message stored at or after this time (ms since the epoch).
        #[arg(long, conflicts_with = "offset")]
        timestamp_ms: Option<u64>,
        #[arg(long)]
        offset: Option<u64>,
    },
}

#[derive(Debug, Subcommand)]
enum MessageCommand {
    /// Every stored copy of a message (the original, retries, its dead letter).
    Get { id: String },
    /// What each consumer group did with a message.
    Trace { id: String },
    /// Messages of a topic stored with a key.
    Query {
        #[arg(long)]
        topic: String,
        #[arg(long)]
        key: String,
    },
}

#[derive(Debug, Subcommand)]
enum DlqCommand {
    /// A page of dead letters, oldest first.
    List {
        group: String,
        #[arg(long)]
        offset: Option<u64>,
        #[arg(long, default_value_t = 32)]
        limit: usize,
    },
    /// Send dead letters (by their offsets in the list) back to their topic.
    Resend {
        group: String,
        #[arg(long = "offset", required = true)]
        offsets: Vec<u64>,
        /// `topic` (every group sees it again) or `retry` (only this group).
        #[arg(long, default_value = "topic")]
        to: String,
    },
}

#[derive(Debug, Subcommand)]
enum RaftCommand {
    /// Term, leader, commit and applied index, members.
    Status,
    /// Hand leadership to another member (the most caught-up one by default).
    TransferLeader {
        #[arg(long)]
        to: Option<u64>,
    },
}

pub async fn run(client: &Client, args: AdminArgs) -> anyhow::Result<()> {
    if let AdminCommand::Cluster = args.command {
        let cluster = client.cluster().await?;
        let rows: Vec<Value> = cluster
            .brokers
            .iter()
            .map(|b| {
                json!({
                    "group": b.group,
                    "node": b.node_id,
                    "role": format!("{:?}", b.role),
                    "term": b.term,
                    "client": b.client_addr,
                    "admin": b.admin_addr,
                    "topics": b.topics,
                    "heartbeat_ms_ago": b.last_heartbeat_ms_ago,
                })
            })
            .collect();
        return print(&Value::Array(rows), args.json);
    }
    let admin = match &args.admin {
        Some(admin) => admin.clone(),
        None => leader_admin(client, args.broker_group.as_deref()).await?,
    };
    let (method, path, body) = request_of(&args.command)?;
    let (status, answer) = http(&admin, method, &path, &body).await?;
    let value: Value = serde_json::from_str(&answer).unwrap_or(Value::String(answer.clone()));
    if status >= 400 {
        let message = value["message"].as_str().unwrap_or(&answer);
        bail!("{admin} answered {status}: {message}");
    }
    print(&value, args.json)
}

/// The admin address of the leader of `broker_group` (or of the first group).
async fn leader_admin(client: &Client, broker_group: Option<&str>) -> anyhow::Result<String> {
    let cluster = client.cluster().await?;
    let mut leaders: Vec<_> = cluster
        .brokers
        .iter()
        .filter(|b| b.role == ferromq_client::BrokerRole::Leader)
        .filter(|b| broker_group.is_none_or(|g| b.group == g))
        .collect();
    leaders.sort_by(|a, b| a.group.cmp(&b.group));
    leaders
        .first()
        .map(|b| b.admin_addr.clone())
        .context("no leader known for that broker group; give --admin")
}

fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            other => format!("%{other:02X}"),
        })
        .collect()
}

/// The HTTP request a command makes: (method, path, JSON body).
fn request_of(command: &AdminCommand) -> anyhow::Result<(&'static str, String, String)> {
    Ok(match command {
        AdminCommand::Cluster => unreachable!("answered from the nameserver"),
        AdminCommand::Topic(TopicCommand::List) => ("GET", "/v1/topics".into(), String::new()),
        AdminCommand::Group(GroupCommand::List) => ("GET", "/v1/groups".into(), String::new()),
        AdminCommand::Group(GroupCommand::Lag { group, topic }) => {
            let mut path = format!("/v1/groups/{}/lag", encode(group));
            if let Some(topic) = topic {
                path.push_str(&format!("?topic={}", encode(topic)));
            }
            ("GET", path, String::new())
        }
        AdminCommand::Group(GroupCommand::ResetOffset {
            group,
            topic,
            to,
            timestamp_ms,
            offset,
        }) => {
            let body = match (to, timestamp_ms, offset) {
                (Some(to), None, None) => json!({"topic": topic, "to": to}),
                (None, Some(time), None) => json!({"topic": topic, "timestamp_ms": time}),
                (None, None, Some(offset)) => json!({"topic": topic, "offset": offset}),
                _ => bail!("give one of --to first|last, --timestamp-ms or --offset"),
            };
            (
                "POST",
                format!("/v1/groups/{}/offsets:reset", encode(group)),
                body.to_string(),
            )
        }
        AdminCommand::Message(MessageCommand::Get { id }) => {
            ("GET", format!("/v1/messages/{}", encode(id)), String::new())
        }
        AdminCommand::Message(MessageCommand::Trace { id }) => (
            "GET",
            format!("/v1/messages/{}/trace", encode(id)),
            String::new(),
        ),
        AdminCommand::Message(MessageCommand::Query { topic, key }) => (
            "GET",
            format!("/v1/messages?topic={}&key={}", encode(topic), encode(key)),
            String::new(),
        ),
        AdminCommand::Dlq(DlqCommand::List {
            group,
            offset,
            limit,
        }) => {
            let mut path = format!("/v1/dlq/{}?limit={limit}", encode(group));
            if let Some(offset) = offset {
                path.push_str(&format!("&offset={offset}"));
            }
            ("GET", path, String::new())
        }
        AdminCommand::Dlq(DlqCommand::Resend { group, offsets, to }) => (
            "POST",
            format!("/v1/dlq/{}:resend", encode(group)),
            json!({"offsets": offsets, "to": to}).to_string(),
        ),
        AdminCommand::Raft(RaftCommand::Status) => ("GET", "/v1/raft".into(), String::new()),
        AdminCommand::Raft(RaftCommand::TransferLeader { to }) => {
            let mut path = "/v1/raft:transfer-leader".to_string();
            if let Some(to) = to {
                path.push_str(&format!("?to={to}"));
            }
            ("POST", path, String::new())
        }
    })
}

/// One HTTP/1.1 request (the admin API speaks JSON, closes after the answer).
async fn http(addr: &str, method: &str, path: &str, body: &str) -> anyhow::Result<(u16, String)> {
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to the admin API at {addr}"))?;
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await?;
    let mut response = Vec::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(30),
        stream.read_to_end(&mut response),
    )
    .await
    .context("the admin API did not answer within 30 s")??;
    let response = String::from_utf8_lossy(&response);
    let (head, body) = response
        .split_once("\r\n\r\n")
        .context("malformed HTTP answer")?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("malformed HTTP status line")?;
    let chunked = head.lines().any(|l| {
        l.to_ascii_lowercase()
            .starts_with("transfer-encoding: chunked")
    });
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_string()
    };
    Ok((status, body))
}

/// The body of a chunked HTTP answer.
fn dechunk(mut text: &str) -> String {
    let mut body = String::new();
    while let Some((size, rest)) = text.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if size == 0 || rest.len() < size {
            break;
        }
        body.push_str(&rest[..size]);
        text = rest[size..].trim_start_matches("\r\n");
    }
    body
}

fn cell(value: &Value) -> String {
    match value {
        Value::Null => "-".into(),
        Value::String(text) => text.clone(),
        Value::Array(items) if items.iter().all(|i| !i.is_object() && !i.is_array()) => {
            items.iter().map(cell).collect::<Vec<_>>().join(",")
        }
        other => other.to_string(),
    }
}

/// Arrays of objects as tables, objects as `key: value` lines (nested lists as tables).
fn print(value: &Value, as_json: bool) -> anyhow::Result<()> {
    if as_json {
        println!("{value}");
        return Ok(());
    }
    match value {
        Value::Array(rows) if rows.iter().all(Value::is_object) && !rows.is_empty() => {
            print_table(rows)
        }
        Value::Object(fields) => {
            for (name, field) in fields {
                match field {
                    Value::Array(rows) if rows.iter().all(Value::is_object) && !rows.is_empty() => {
                        println!("{name}:");
                        print_table(rows);
                    }
                    other => println!("{name}: {}", cell(other)),
                }
            }
        }
        Value::Array(_) => println!("(none)"),
        other => println!("{}", cell(other)),
    }
    Ok(())
}

fn print_table(rows: &[Value]) {
    let columns: Vec<String> = rows[0]
        .as_object()
        .map(|o| o.keys().cloned().collect())
        .unwrap_or_default();
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|row| columns.iter().map(|c| cell(&row[c])).collect())
        .collect();
    let widths: Vec<usize> = columns
        .iter()
        .enumerate()
        .map(|(i, c)| {
            cells
                .iter()
                .map(|r| r[i].chars().count())
                .chain([c.len()])
                .max()
                .unwrap_or(0)
                .min(60)
        })
        .collect();
    let line = |values: &[String]| {
        values
            .iter()
            .zip(&widths)
            .map(|(v, w)| format!("{:<w$}", truncate(v, *w), w = *w))
            .collect::<Vec<_>>()
            .join("  ")
    };
    println!("{}", line(&columns).to_uppercase());
    for row in &cells {
        println!("{}", line(row));
    }
}

fn truncate(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        return text.to_string();
    }
    let mut cut: String = text.chars().take(width.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_bodies_are_joined_and_names_encoded() {
        assert_eq!(dechunk("4\r\nabcd\r\n3\r\nefg\r\n0\r\n\r\n"), "abcdefg");
        assert_eq!(encode("%DLQ%billing a"), "%25DLQ%25billing%20a");
    }
}
