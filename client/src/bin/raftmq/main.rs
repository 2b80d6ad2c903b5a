//! `raftmq`: the command-line tool.
//!
//! ```text
//! raftmq --brokers HOST:PORT[,...] topic create NAME --queues N [--if-not-exists]
//! raftmq topic list | topic describe NAME | topic delete NAME
//! raftmq produce NAME [--key K | -K DELIM] [-H K=V]... [--queue Q] [-D BYTE]   # one message per line
//! raftmq consume NAME [--queue Q] [-o earliest|latest|OFFSET|-N|@MS|TIME] [-e] [--count N]
//!                     [-f FORMAT | --json | -v]
//! raftmq consume NAME --group G [--count N] [--auto-offset-reset latest]  # as a group member
//! raftmq group list | group describe G | group reset G --topic T --to ... [--create]
//! raftmq cluster status | cluster transfer-leader NODE
//! ```
//!
//! Global flags (`--brokers`, `-q`, `--timeout-ms`, `--retry-timeout-ms`) go anywhere.
//! Data goes to stdout, summaries and errors to stderr; an error is one line and a
//! non-zero exit.

use std::io::{BufRead, Write};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use output::Output;

mod output;

/// `println!` that returns the write error instead of panicking, so that a closed
/// stdout (`raftmq ... | head`) ends the command quietly (see `is_broken_pipe`).
macro_rules! out {
    () => {
        writeln!(std::io::stdout().lock())?
    };
    ($($arg:tt)*) => {
        writeln!(std::io::stdout().lock(), $($arg)*)?
    };
}
use clap::{Parser, Subcommand, ValueEnum};
use raftmq_client::{
    Acks, Admin, Client, ClientConfig, Compression, ConsumedMessage, Consumer, ConsumerConfig,
    GroupConfig, GroupConsumer, Message, OffsetReset, Partitioner, Producer, SeekTo, ServerError,
};

#[derive(Parser)]
#[command(name = "raftmq", version, about = "raftmq command-line tool")]
struct Cli {
    /// Bootstrap brokers, comma-separated host:port.
    #[arg(
        long,
        env = "RAFTMQ_BROKERS",
        default_value = "127.0.0.1:7070",
        value_delimiter = ',',
        global = true
    )]
    brokers: Vec<String>,
    /// No summaries or notes on stderr (errors are still printed).
    #[arg(short, long, global = true)]
    quiet: bool,
    /// Per-request timeout in milliseconds.
    #[arg(long, default_value_t = 30_000, global = true)]
    timeout_ms: u64,
    /// How long to keep retrying what may succeed later (no leader yet, a broker
    /// restarting, connection refused), in milliseconds.
    #[arg(long, default_value_t = 30_000, global = true)]
    retry_timeout_ms: u64,
    /// Connect over TLS, trusting brokers whose certificates this CA (the cluster
    /// CA, PEM) signed.
    #[arg(long, value_name = "FILE", env = "RAFTMQ_TLS_CA", global = true)]
    tls_ca: Option<std::path::PathBuf>,
    /// A client certificate (PEM) to log in with; needs --tls-key and --tls-ca.
    #[arg(long, value_name = "FILE", env = "RAFTMQ_CLIENT_TLS_CERT", global = true, requires_all = ["tls_key", "tls_ca"])]
    tls_cert: Option<std::path::PathBuf>,
    /// The client certificate's key (PEM).
    #[arg(
        long,
        value_name = "FILE",
        env = "RAFTMQ_CLIENT_TLS_KEY",
        global = true,
        requires = "tls_cert"
    )]
    tls_key: Option<std::path::PathBuf>,
    /// A client configuration file (TOML: brokers, tls_ca, tls_cert, tls_key, user,
    /// password_file, sasl_mechanism); flags and environment variables win over it.
    #[arg(long, value_name = "FILE", env = "RAFTMQ_CLIENT_CONFIG", global = true)]
    client_config: Option<std::path::PathBuf>,
    /// Log in as this user (SCRAM); the password comes from RAFTMQ_PASSWORD.
    #[arg(long, env = "RAFTMQ_USER", global = true)]
    user: Option<String>,
    /// The SCRAM mechanism to log in with.
    #[arg(long, value_enum, default_value = "scram-sha-512", global = true)]
    sasl_mechanism: SaslMechanismArg,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create, list, describe or delete topics.
    Topic {
        #[command(subcommand)]
        command: TopicCommand,
    },
    /// Produce one message per line of standard input.
    Produce {
        /// The topic.
        topic: String,
        /// Key of every message (the queue is chosen by its hash).
        #[arg(long, conflicts_with = "key_delimiter")]
        key: Option<String>,
        /// Split each input message at the first DELIM: key before, value after
        /// (a message without it has no key).
        #[arg(long, short = 'K', value_name = "DELIM")]
        key_delimiter: Option<String>,
        /// A header on every message, KEY=VALUE (repeat for several).
        #[arg(long = "header", short = 'H', value_name = "KEY=VALUE")]
        headers: Vec<String>,
        /// Send every message to this queue.
        #[arg(long)]
        queue: Option<u32>,
        /// How messages without a key (and without --queue) are spread over the
        /// topic's queues.
        #[arg(long, value_enum, default_value_t = PartitionerArg::Sticky)]
        partitioner: PartitionerArg,
        /// Acknowledgement level.
        #[arg(long, value_enum, default_value_t = AcksArg::Quorum)]
        acks: AcksArg,
        /// Compress each batch (stored and replicated compressed; consumers
        /// decompress).
        #[arg(long, value_enum, default_value_t = CompressionArg::None)]
        compression: CompressionArg,
        /// The byte that ends each message in the input (default a newline; `\0`
        /// for NUL-separated input). Input is bytes: any value, UTF-8 or not.
        #[arg(long, short = 'D', default_value = "\\n", value_parser = parse_delimiter)]
        delimiter: u8,
    },
    /// Print message values, one per line.
    Consume {
        /// The topic.
        topic: String,
        /// Read only this queue (default: all).
        #[arg(long)]
        queue: Option<u32>,
        /// Where to start: earliest, latest, an offset, -N (N before the end of
        /// each queue), @MILLISECONDS since the epoch or an RFC 3339 UTC time.
        /// An offset past the end of a queue is refused, never rewound.
        #[arg(
            long,
            short = 'o',
            default_value = "earliest",
            allow_hyphen_values = true
        )]
        from: String,
        /// Exit once every queue read is at the end it had when the command started
        /// (with --group: every queue assigned to this member; it then commits and
        /// leaves the group).
        #[arg(long, short = 'e')]
        exit_at_end: bool,
        /// With --group: where a queue the group never committed starts.
        #[arg(long, value_enum, default_value = "earliest")]
        auto_offset_reset: ResetArg,
        /// Exit after this many messages (default: run until interrupted).
        #[arg(long)]
        count: Option<u64>,
        /// Print queue, offset, timestamp, key and headers before each value
        /// (tab-separated): `--format '%p\t%o\t%T\t%k\t%h\t%s\n'`.
        #[arg(long, short = 'v', conflicts_with_all = ["format", "json"])]
        verbose: bool,
        /// kcat-style output format: %t topic, %p queue, %o offset, %k key, %K key
        /// length, %s value, %S value length, %T timestamp (ms), %h headers
        /// (k=v,...), %% and the escapes \n \t \r \0 \\ (default '%s\n').
        #[arg(long, short = 'f', conflicts_with = "json")]
        format: Option<String>,
        /// One JSON object per message: topic, queue, offset, timestamp_ms, key,
        /// value, headers.
        #[arg(long, short = 'J')]
        json: bool,
        /// Consume as a member of this group (queues assigned by the group, offsets
        /// committed; `--queue` and `--from` then do not apply: a group starts at
        /// its committed offsets, else at `--auto-offset-reset`). Ctrl-C or SIGTERM
        /// commits what was printed, leaves the group and exits 0.
        #[arg(long, conflicts_with_all = ["queue", "from"])]
        group: Option<String>,
    },
    /// Consumer groups.
    Group {
        #[command(subcommand)]
        command: GroupCommand,
    },
    /// Cluster status and operations.
    Cluster {
        #[command(subcommand)]
        command: ClusterCommand,
    },
    /// Create, change, delete or list users (superusers only on a broker that
    /// requires logins).
    User {
        #[command(subcommand)]
        command: UserCommand,
    },
    /// Add, remove or list access control lists (enforced when the brokers
    /// require logins; superusers only).
    Acl {
        #[command(subcommand)]
        command: AclCommand,
    },
}

#[derive(Subcommand)]
enum AclCommand {
    /// Allow (or with --deny, deny) an operation.
    Add(AclArgs),
    /// Remove an ACL (the same arguments it was added with).
    Remove(AclArgs),
    /// List every ACL.
    List,
}

#[derive(clap::Args)]
struct AclArgs {
    /// Who: User:NAME, or User:* for every logged-in user.
    #[arg(long)]
    principal: String,
    /// A topic (or with --prefixed, every topic whose name starts with it; `*`:
    /// every topic).
    #[arg(long, group = "resource")]
    topic: Option<String>,
    /// A consumer group (same rules as --topic).
    #[arg(long, group = "resource")]
    group: Option<String>,
    /// The cluster: users, ACLs, members, leadership.
    #[arg(long, group = "resource")]
    cluster: bool,
    /// The name is a prefix.
    #[arg(long)]
    prefixed: bool,
    /// What may (or may not) be done.
    #[arg(long, value_enum)]
    operation: AclOperationArg,
    /// Deny instead of allow (deny wins over any allow).
    #[arg(long)]
    deny: bool,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum AclOperationArg {
    All,
    Produce,
    Consume,
    Describe,
    Create,
    Delete,
    Alter,
}

impl AclArgs {
    fn binding(&self) -> Result<raftmq_client::pb::AclBinding> {
        use raftmq_client::pb::{AclOperation as O, AclPatternType, AclResourceType as R};
        let (resource, name) = match (&self.topic, &self.group, self.cluster) {
            (Some(t), None, false) => (R::Topic, t.clone()),
            (None, Some(g), false) => (R::Group, g.clone()),
            (None, None, true) => (R::Cluster, String::new()),
            _ => anyhow::bail!("give one of --topic, --group or --cluster"),
        };
        Ok(raftmq_client::pb::AclBinding {
            principal: self.principal.clone(),
            resource_type: resource as i32,
            resource_name: name,
            pattern_type: if self.prefixed {
                AclPatternType::Prefixed
            } else {
                AclPatternType::Literal
            } as i32,
            operation: match self.operation {
                AclOperationArg::All => O::All,
                AclOperationArg::Produce => O::Produce,
                AclOperationArg::Consume => O::Consume,
                AclOperationArg::Describe => O::Describe,
                AclOperationArg::Create => O::Create,
                AclOperationArg::Delete => O::Delete,
                AclOperationArg::Alter => O::Alter,
            } as i32,
            deny: self.deny,
        })
    }
}

#[derive(Subcommand)]
enum UserCommand {
    /// Create a user. The password comes from RAFTMQ_NEW_PASSWORD or, when unset,
    /// the first line of standard input; it never leaves this process (only its
    /// SCRAM keys are sent).
    Create {
        /// The user name.
        name: String,
    },
    /// Change a user's password (read like `create`'s).
    Passwd {
        /// The user name.
        name: String,
    },
    /// Delete a user: every node refuses it from then on.
    Delete {
        /// The user name.
        name: String,
    },
    /// List users and their mechanisms.
    List,
}

#[derive(Subcommand)]
enum TopicCommand {
    /// Create a topic.
    Create {
        /// The name.
        name: String,
        /// Number of queues (Kafka's partitions).
        #[arg(long, visible_alias = "partitions", default_value_t = 1)]
        queues: u32,
        /// Delete this topic's messages older than this many ms (default: only the
        /// broker's retention applies).
        #[arg(long, default_value_t = 0)]
        retention_ms: u64,
        /// Delete the oldest messages of each queue beyond this many bytes.
        #[arg(long, default_value_t = 0)]
        retention_bytes: u64,
        /// Succeed (and change nothing) if the topic exists already.
        #[arg(long)]
        if_not_exists: bool,
    },
    /// List topics.
    List,
    /// Show a topic's queues and offsets.
    Describe {
        /// The name.
        name: String,
    },
    /// Delete a topic.
    Delete {
        /// The name.
        name: String,
    },
}

#[derive(Subcommand)]
enum GroupCommand {
    /// List groups.
    List,
    /// Members, assignment, committed offsets and lag of a group.
    Describe {
        /// The group.
        group: String,
    },
    /// Move a group's committed offsets for every queue of a topic (refused while
    /// the group has live members).
    Reset {
        /// The group.
        group: String,
        /// The topic.
        #[arg(long)]
        topic: String,
        /// earliest, latest, an offset (a number), or a time: RFC 3339 UTC
        /// (2026-11-25T20:00:00Z) or @MILLISECONDS since the Unix epoch.
        #[arg(long)]
        to: String,
        /// Create the group if it does not exist (else a misspelled name is refused).
        #[arg(long)]
        create: bool,
    },
}

/// Parses a position (`--to` of `group reset`, `--from` of `consume`); the caller
/// names its flag.
fn parse_reset_target(to: &str) -> Result<SeekTo> {
    match to {
        "earliest" => return Ok(SeekTo::Earliest),
        "latest" => return Ok(SeekTo::Latest),
        _ => {}
    }
    if let Ok(offset) = to.parse::<u64>() {
        return Ok(SeekTo::Offset(offset));
    }
    if let Some(ms) = to.strip_prefix('@') {
        return Ok(SeekTo::Timestamp(ms.parse().with_context(|| {
            format!("{to:?}: @ is followed by milliseconds since 1970-01-01T00:00:00Z")
        })?));
    }
    parse_rfc3339_utc_ms(to)
        .map(SeekTo::Timestamp)
        .with_context(|| {
            format!(
                "{to:?}: expected earliest, latest, an OFFSET, @MILLISECONDS or a UTC time \
                 YYYY-MM-DDTHH:MM:SSZ"
            )
        })
}

/// `YYYY-MM-DDTHH:MM:SS[.fff]Z` to milliseconds since the Unix epoch.
fn parse_rfc3339_utc_ms(s: &str) -> Result<i64> {
    let s = s.strip_suffix('Z').context("times are UTC and end in Z")?;
    let (date, time) = s.split_once('T').context("date and time are joined by T")?;
    let num = |part: &str| part.parse::<i64>().context("not a number");
    let d: Vec<&str> = date.split('-').collect();
    let t: Vec<&str> = time.split(':').collect();
    anyhow::ensure!(
        d.len() == 3 && t.len() == 3,
        "expected YYYY-MM-DDTHH:MM:SSZ"
    );
    let (year, month, day) = (num(d[0])?, num(d[1])?, num(d[2])?);
    let (hour, minute) = (num(t[0])?, num(t[1])?);
    let (secs, millis) = match t[2].split_once('.') {
        Some((s, frac)) => (num(s)?, num(&format!("{frac:0<3}")[..3])?),
        None => (num(t[2])?, 0),
    };
    anyhow::ensure!(
        (1..=12).contains(&month)
            && (1..=31).contains(&day)
            && hour < 24
            && minute < 60
            && secs < 61,
        "a field is out of range"
    );
    // Days from the civil date (proleptic Gregorian), after H. Hinnant's algorithm.
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Ok(((days * 24 + hour) * 60 + minute) * 60_000 + secs * 1000 + millis)
}

#[derive(Subcommand)]
enum ClusterCommand {
    /// Each node's Raft role, term and indexes, and the leader's view of its peers.
    Status,
    /// Hand leadership to a node.
    TransferLeader {
        /// The node id (from 1).
        #[arg(value_parser = clap::value_parser!(u64).range(1..))]
        node: u64,
    },
    /// Make a learner (a node started with --join) a voter, once it has caught up.
    AddNode {
        /// The node id (from 1).
        #[arg(value_parser = clap::value_parser!(u64).range(1..))]
        node: u64,
    },
    /// Remove a voter or learner from the cluster, whether it is running or not
    /// (decommission it first when it holds data-group replicas).
    RemoveNode {
        /// The node id (from 1).
        #[arg(value_parser = clap::value_parser!(u64).range(1..))]
        node: u64,
        /// Remove it even while data groups still list it as a member (their moves
        /// off it not finished): until they finish, those groups have one replica
        /// fewer to survive a failure with.
        #[arg(long)]
        force: bool,
    },
    /// Move every data-group replica off a node (running or dead) and place none
    /// there any more; then remove it with `remove-node`.
    Decommission {
        /// The node id (from 1).
        #[arg(value_parser = clap::value_parser!(u64).range(1..))]
        node: u64,
    },
    /// Even out data-group replicas over the nodes (after adding one).
    Rebalance {
        /// Replicas moved at most.
        #[arg(long, default_value_t = 64)]
        max_moves: u32,
    },
    /// Add data groups (the number only grows): topics created from then on spread
    /// their queues over every group; existing topics stay where they are.
    AddDataGroups {
        /// How many groups to add.
        count: u32,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum ResetArg {
    Earliest,
    Latest,
}

/// `--delimiter`: one byte, or the escapes `\n`, `\0`, `\t`.
fn parse_delimiter(s: &str) -> std::result::Result<u8, String> {
    match s {
        "\\n" => Ok(b'\n'),
        "\\0" => Ok(0),
        "\\t" => Ok(b'\t'),
        _ if s.len() == 1 => Ok(s.as_bytes()[0]),
        _ => Err(format!("{s:?} is not one byte (or \\n, \\0, \\t)")),
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum PartitionerArg {
    /// 64 KiB of messages to one queue, then the next (the producer's default:
    /// large batches, every queue the same share over time).
    Sticky,
    /// One message to each queue in turn.
    RoundRobin,
}

#[derive(Clone, Copy, ValueEnum)]
enum AcksArg {
    Leader,
    Quorum,
}

#[derive(Clone, Copy, ValueEnum)]
enum CompressionArg {
    None,
    Lz4,
    Zstd,
}

/// Errors end the process with one line on stderr and status 1 (no backtrace, even
/// with `RUST_BACKTRACE` set: those are for panics).
fn main() -> std::process::ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("raftmq: error: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(run());
    // A stdin reader blocked on a terminal must not keep the process alive.
    runtime.shutdown_timeout(Duration::from_millis(200));
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        // Like other Unix filters (`raftmq consume ... | head`), end quietly when the
        // reader of stdout goes away. (SIGPIPE stays ignored, as Rust sets it: a
        // default disposition would also kill the process on a socket write.)
        Err(e) if is_broken_pipe(&e) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("raftmq: error: {}", one_line(&e));
            std::process::ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line (see [`raftmq_proto::error::one_line`]).
fn one_line(e: &anyhow::Error) -> String {
    raftmq_proto::error::one_line(e.as_ref())
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

async fn run() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        // Notes for a person: no timestamp or module path, colour only on a terminal.
        .without_time()
        .with_target(false)
        .with_ansi({
            use std::io::IsTerminal;
            std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
                && std::io::stderr().is_terminal()
        })
        .init();
    let matches = <Cli as clap::CommandFactory>::command().get_matches();
    let mut cli = <Cli as clap::FromArgMatches>::from_arg_matches(&matches)?;
    let settings = match &cli.client_config {
        Some(path) => Some(raftmq_client::ClientSettings::load(path)?),
        None => None,
    };
    if matches.value_source("brokers") == Some(clap::parser::ValueSource::DefaultValue) {
        if let Some(brokers) = settings.as_ref().and_then(|s| s.brokers.clone()) {
            cli.brokers = brokers;
        }
    }
    let config = ClientConfig {
        request_timeout: Duration::from_millis(cli.timeout_ms),
        retry_timeout: Duration::from_millis(cli.retry_timeout_ms),
        tls: cli.tls_ca.clone().map(|ca| raftmq_client::ClientTls {
            ca,
            identity: cli.tls_cert.clone().zip(cli.tls_key.clone()),
        }),
        credentials: match &cli.user {
            Some(user) => Some(raftmq_client::Credentials {
                user: user.clone(),
                password: std::env::var("RAFTMQ_PASSWORD").map_err(|_| {
                    anyhow::anyhow!("--user {user} needs its password in RAFTMQ_PASSWORD")
                })?,
                mechanism: match cli.sasl_mechanism {
                    SaslMechanismArg::ScramSha256 => raftmq_client::ScramMechanism::ScramSha256,
                    SaslMechanismArg::ScramSha512 => raftmq_client::ScramMechanism::ScramSha512,
                },
            }),
            None => None,
        },
        ..ClientConfig::default()
    };
    // The file fills in what flags and the environment left unset.
    let config = match &settings {
        Some(settings) => {
            let mut settings = settings.clone();
            if config.credentials.is_some() {
                settings.user = None;
            }
            if config.tls.is_some() {
                settings.tls_ca = None;
            }
            let from_file = settings.apply(
                ClientConfig::default(),
                std::env::var("RAFTMQ_PASSWORD").ok(),
            )?;
            ClientConfig {
                tls: config.tls.or(from_file.tls),
                credentials: config.credentials.or(from_file.credentials),
                ..config
            }
        }
        None => config,
    };
    let client = Client::connect_with(&cli.brokers, config)
        .await
        .with_context(|| format!("connecting to {}", cli.brokers.join(",")))?;
    let quiet = cli.quiet;
    match cli.command {
        Command::Topic { command } => topic(&client, command, quiet).await,
        Command::Produce {
            topic,
            key,
            key_delimiter,
            headers,
            queue,
            partitioner,
            acks,
            compression,
            delimiter,
        } => {
            let shape = Shape {
                key,
                key_delimiter,
                headers: parse_headers(&headers)?,
                queue,
                partitioner: match partitioner {
                    PartitionerArg::Sticky => Partitioner::Sticky,
                    PartitionerArg::RoundRobin => Partitioner::RoundRobin,
                },
            };
            let compression = match compression {
                CompressionArg::None => Compression::None,
                CompressionArg::Lz4 => Compression::Lz4,
                CompressionArg::Zstd => Compression::Zstd,
            };
            produce(&client, &topic, shape, acks, compression, delimiter, quiet).await
        }
        Command::Consume {
            topic,
            count,
            verbose,
            format,
            json,
            group: Some(group),
            auto_offset_reset,
            exit_at_end,
            ..
        } => {
            let output = output_of(verbose, format.as_deref(), json)?;
            let how = GroupRead {
                count,
                reset: auto_offset_reset,
                exit_at_end,
            };
            consume_group(&client, &topic, &group, &output, how).await
        }
        Command::Consume {
            topic,
            queue,
            from,
            count,
            verbose,
            format,
            json,
            exit_at_end,
            group: None,
            ..
        } => {
            let output = output_of(verbose, format.as_deref(), json)?;
            consume(&client, &topic, queue, &from, count, &output, exit_at_end).await
        }
        Command::Group { command } => group(&client, command).await,
        Command::Cluster { command } => cluster(&client, command).await,
        Command::User { command } => user(&client, command, quiet).await,
        Command::Acl { command } => acl(&client, command, quiet).await,
    }
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum SaslMechanismArg {
    #[value(name = "scram-sha-256")]
    ScramSha256,
    #[value(name = "scram-sha-512")]
    ScramSha512,
}

/// A new password: RAFTMQ_NEW_PASSWORD, else the first line of standard input.
fn new_password() -> Result<String> {
    if let Ok(password) = std::env::var("RAFTMQ_NEW_PASSWORD") {
        return Ok(password);
    }
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .context("reading the password from standard input")?;
    let password = line.trim_end_matches(['\r', '\n']).to_owned();
    anyhow::ensure!(
        !password.is_empty(),
        "no password: set RAFTMQ_NEW_PASSWORD or write it on standard input"
    );
    Ok(password)
}

async fn acl(client: &Client, command: AclCommand, quiet: bool) -> Result<()> {
    use raftmq_client::pb::{AclOperation, AclPatternType, AclResourceType};
    let admin = Admin::new(client);
    match command {
        AclCommand::Add(args) => {
            admin.create_acls(vec![args.binding()?]).await?;
            if !quiet {
                eprintln!("added");
            }
        }
        AclCommand::Remove(args) => {
            let deleted = admin.delete_acls(vec![args.binding()?]).await?;
            if !quiet {
                eprintln!("removed {deleted}");
            }
        }
        AclCommand::List => {
            let bindings = admin.list_acls().await?;
            out!("principal\tresource\tname\tpattern\toperation\tpermission");
            for b in bindings {
                let resource =
                    AclResourceType::try_from(b.resource_type).map_or("unknown", |r| match r {
                        AclResourceType::Topic => "topic",
                        AclResourceType::Group => "group",
                        AclResourceType::Cluster => "cluster",
                        AclResourceType::Unknown => "unknown",
                    });
                let pattern = match AclPatternType::try_from(b.pattern_type) {
                    Ok(AclPatternType::Prefixed) => "prefixed",
                    _ => "literal",
                };
                let operation =
                    AclOperation::try_from(b.operation).map_or("unknown".to_owned(), |o| {
                        o.as_str_name()
                            .trim_start_matches("ACL_OPERATION_")
                            .to_ascii_lowercase()
                    });
                out!(
                    "{}\t{resource}\t{}\t{pattern}\t{operation}\t{}",
                    b.principal,
                    b.resource_name,
                    if b.deny { "deny" } else { "allow" }
                );
            }
        }
    }
    Ok(())
}

async fn user(client: &Client, command: UserCommand, quiet: bool) -> Result<()> {
    let admin = Admin::new(client);
    let creating = matches!(command, UserCommand::Create { .. });
    match command {
        UserCommand::Create { name } | UserCommand::Passwd { name } => {
            let exists = admin.list_users().await?.iter().any(|u| u.name == name);
            if creating && exists {
                anyhow::bail!(
                    "user {name:?} exists; `raftmq user passwd {name}` changes its password"
                );
            }
            if !creating && !exists {
                anyhow::bail!("there is no user {name:?}; `raftmq user create {name}` creates it");
            }
            let created = admin.upsert_user(&name, &new_password()?).await?;
            if !quiet {
                if created {
                    eprintln!("created user {name:?}");
                } else {
                    eprintln!("changed the password of user {name:?}");
                }
            }
        }
        UserCommand::Delete { name } => {
            admin.delete_user(&name).await?;
            if !quiet {
                eprintln!("deleted user {name:?}");
            }
        }
        UserCommand::List => {
            let users = admin.list_users().await?;
            out!("user\tmechanisms");
            for user in users {
                out!("{}\t{}", user.name, user.mechanisms.join(","));
            }
        }
    }
    Ok(())
}

async fn topic(client: &Client, command: TopicCommand, quiet: bool) -> Result<()> {
    let admin = Admin::new(client);
    match command {
        TopicCommand::Create {
            name,
            queues,
            retention_ms,
            retention_bytes,
            if_not_exists,
        } => {
            let retention = raftmq_client::TopicRetention {
                ms: retention_ms,
                bytes: retention_bytes,
            };
            match admin.create_topic_with(&name, queues, retention).await {
                Ok(()) => out!(
                    "created topic {name} with {}",
                    plural(queues.into(), "queue")
                ),
                Err(e)
                    if if_not_exists
                        && matches!(e.server_error(), Some(ServerError::TopicExists { .. })) =>
                {
                    if !quiet {
                        eprintln!("topic {name} exists already (--if-not-exists)");
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
        TopicCommand::List => {
            out!("topic\tqueues");
            for t in admin.list_topics().await? {
                out!("{}\t{}", t.name, t.queues);
            }
        }
        TopicCommand::Describe { name } => {
            let d = admin.describe_topic(&name).await?;
            let limit = |v: u64, unit: &str| {
                if v == 0 {
                    "broker default".to_string()
                } else {
                    format!("{v} {unit}")
                }
            };
            out!(
                "topic {} queues {} retention {} / {}",
                d.name,
                d.queues.len(),
                limit(d.retention.ms, "ms"),
                limit(d.retention.bytes, "bytes")
            );
            out!("queue\tlog_start\tlog_end\tmessages\tgroup\tleader\treplicas");
            for (q, (start, end)) in d.queues.iter().enumerate() {
                let p = d.placement.get(q).cloned().unwrap_or_default();
                let leader = match p.leader {
                    0 => "unknown".to_string(),
                    id => id.to_string(),
                };
                let replicas = match p.replicas.is_empty() {
                    true => "all".to_string(),
                    false => p
                        .replicas
                        .iter()
                        .map(u64::to_string)
                        .collect::<Vec<_>>()
                        .join(","),
                };
                out!(
                    "{q}\t{start}\t{end}\t{}\t{}\t{leader}\t{replicas}",
                    end.saturating_sub(*start),
                    p.group
                );
            }
        }
        TopicCommand::Delete { name } => {
            admin.delete_topic(&name).await?;
            out!("deleted topic {name}");
        }
    }
    Ok(())
}

/// How `produce` turns an input message into a [`Message`].
struct Shape {
    key: Option<String>,
    key_delimiter: Option<String>,
    headers: Vec<(String, String)>,
    queue: Option<u32>,
    partitioner: Partitioner,
}

/// `KEY=VALUE` headers.
fn parse_headers(headers: &[String]) -> Result<Vec<(String, String)>> {
    headers
        .iter()
        .map(|h| {
            h.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .with_context(|| format!("--header {h:?}: expected KEY=VALUE"))
        })
        .collect()
}

/// The output chosen by `--verbose`, `--format` or `--json`.
fn output_of(verbose: bool, format: Option<&str>, json: bool) -> Result<Output> {
    Ok(match (verbose, format, json) {
        (_, _, true) => Output::Json,
        (_, Some(f), _) => {
            Output::parse_format(f).map_err(|e| anyhow::anyhow!("--format {f:?}: {e}"))?
        }
        (true, None, false) => Output::verbose(),
        (false, None, false) => Output::value_lines(),
    })
}

impl Shape {
    fn message(&self, topic: &str, input: Vec<u8>) -> Message {
        let mut m = match &self.key_delimiter {
            Some(d) => match find(&input, d.as_bytes()) {
                Some(at) => {
                    let value = input[at + d.len()..].to_vec();
                    let mut key = input;
                    key.truncate(at);
                    Message::new(topic, value).with_key(key)
                }
                None => Message::new(topic, input),
            },
            None => Message::new(topic, input),
        };
        if let Some(k) = &self.key {
            m = m.with_key(k.clone());
        }
        for (k, v) in &self.headers {
            m = m.with_header(k.clone(), v.clone());
        }
        if let Some(q) = self.queue {
            m = m.with_queue(q);
        }
        m
    }
}

/// The first position of `needle` in `haystack`.
fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() {
        return None;
    }
    haystack.windows(needle.len()).position(|w| w == needle)
}

async fn produce(
    client: &Client,
    topic: &str,
    shape: Shape,
    acks: AcksArg,
    compression: Compression,
    delimiter: u8,
    quiet: bool,
) -> Result<()> {
    let acks = match acks {
        AcksArg::Leader => Acks::Leader,
        AcksArg::Quorum => Acks::Quorum,
    };
    // A topic that does not exist fails every line alike: say so once, up front.
    if let Err(e) = client.topic_queues(topic).await {
        if matches!(e.server_error(), Some(ServerError::UnknownTopic { .. })) {
            bail!(
                "topic {topic:?} does not exist: `raftmq topic list` shows the topics, \
                 `raftmq topic create {topic} --queues N` creates it"
            );
        }
        return Err(e.into());
    }
    let producer = Producer::builder(client)
        .acks(acks)
        .partitioner(shape.partitioner)
        .compression(compression)
        .build()
        .await?;
    // Read stdin on a blocking thread, as bytes (any value, UTF-8 or not), one
    // message per delimiter; hand them over a bounded channel.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(1024);
    let reader = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
        let mut input = std::io::stdin().lock();
        loop {
            let mut message = Vec::new();
            if input.read_until(delimiter, &mut message)? == 0 {
                return Ok(());
            }
            if message.last() == Some(&delimiter) {
                message.pop();
            }
            if tx.blocking_send(message).is_err() {
                return Ok(());
            }
        }
    });
    // Bounded: past this many unacknowledged messages, wait for the oldest.
    const MAX_UNACKED: usize = 100_000;
    let mut acks_pending = std::collections::VecDeque::new();
    let mut sent = 0u64;
    let mut outcomes = Outcomes::default();
    let mut aborted = false;
    while let Some(line) = rx.recv().await {
        if acks_pending.len() >= MAX_UNACKED {
            if let Some(ack) = acks_pending.pop_front() {
                outcomes.record(ack.await);
            }
        }
        sent += 1;
        match producer.send(shape.message(topic, line)).await {
            Ok(ack) => acks_pending.push_back(ack),
            // The topic went away or is not ours to write: every line would fail.
            Err(e)
                if matches!(
                    e.server_error(),
                    Some(
                        ServerError::UnknownTopic { .. }
                            | ServerError::TopicAuthorizationFailed { .. }
                    )
                ) =>
            {
                eprintln!("raftmq: message {sent} (input record {sent}) refused: {e}");
                outcomes.record::<()>(Err(e));
                aborted = true;
                break;
            }
            // Refused before sending (too large, say): this one fails, the rest go on.
            Err(e) if !matches!(e, raftmq_client::ClientError::Closed) => {
                eprintln!("raftmq: message {sent} (input record {sent}) refused: {e}");
                outcomes.record::<()>(Err(e));
            }
            Err(e) => return Err(e.into()),
        }
    }
    // Stopped early: the rest of the input is not read (the reader may wait on a
    // terminal; the runtime is shut down without waiting for it).
    drop(rx);
    let read_result = if aborted {
        Ok(())
    } else {
        reader.await.context("stdin reader")?
    };
    producer.flush().await;
    for ack in acks_pending {
        outcomes.record(ack.await);
    }
    producer.close().await;
    // On stderr: stdout stays for data a user may pipe.
    if !quiet || outcomes.acked < sent {
        eprintln!("{}", outcomes.summary(sent));
    }
    // Reading stopped early (an I/O error): what was sent is accounted for above.
    read_result.with_context(|| format!("reading standard input after {sent} messages"))?;
    if let Some(e) = outcomes.first_error {
        bail!("first error: {e}");
    }
    Ok(())
}

/// What became of the messages of a `produce` run.
#[derive(Default)]
struct Outcomes {
    acked: u64,
    /// Refused for good, or never stored: safe to send again.
    failed: u64,
    /// Gave up without knowing: may be stored (sending again may duplicate).
    unknown: u64,
    first_error: Option<raftmq_client::ClientError>,
}

impl Outcomes {
    fn record<T>(&mut self, outcome: Result<T, raftmq_client::ClientError>) {
        match outcome {
            Ok(_) => self.acked += 1,
            Err(e) => {
                if e.outcome_unknown() {
                    self.unknown += 1;
                } else {
                    self.failed += 1;
                }
                self.first_error.get_or_insert(e);
            }
        }
    }

    fn summary(&self, sent: u64) -> String {
        let mut line = format!("{} of {} acknowledged", self.acked, plural(sent, "message"));
        if self.failed > 0 {
            line += &format!(", {} failed (not stored)", self.failed);
        }
        if self.unknown > 0 {
            line += &format!(
                ", {} with an unknown outcome (may be stored; sending again may duplicate)",
                self.unknown
            );
        }
        line
    }
}

/// `1 message`, `2 messages`.
fn plural(n: u64, noun: &str) -> String {
    if n == 1 {
        format!("{n} {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

/// Where `consume --from` starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum From {
    Seek(SeekTo),
    /// N messages before the end of each queue.
    BeforeEnd(u64),
}

/// Parses `--from`: earliest, latest, OFFSET, -N, @MILLISECONDS or RFC 3339 UTC.
fn parse_from(from: &str) -> Result<From> {
    if let Some(n) = from.strip_prefix('-') {
        let n = n
            .parse()
            .with_context(|| format!("--from {from:?}: -N takes a number of messages"))?;
        return Ok(From::BeforeEnd(n));
    }
    parse_reset_target(from)
        .map(From::Seek)
        .context("--from (or -N for the last N messages)")
}

async fn consume(
    client: &Client,
    topic: &str,
    queue: Option<u32>,
    from: &str,
    count: Option<u64>,
    output: &Output,
    exit_at_end: bool,
) -> Result<()> {
    let from = parse_from(from)?;
    let config = ConsumerConfig {
        // Never rewound: a position the broker says is out of range is an error.
        reset: OffsetReset::Error,
        ..ConsumerConfig::default()
    };
    let mut consumer = Consumer::with_config(client, config);
    let queues: Vec<u32> = queue.into_iter().collect();
    consumer.assign(topic, &queues).await?;
    let assigned: Vec<u32> = consumer.positions().keys().copied().collect();
    let mut ends = std::collections::BTreeMap::new();
    for q in assigned {
        let start = consumer.seek(q, SeekTo::Earliest).await?;
        let end = consumer.seek(q, SeekTo::Latest).await?;
        ends.insert(q, end);
        let target = match from {
            From::BeforeEnd(n) => SeekTo::Offset(end.saturating_sub(n).max(start)),
            From::Seek(SeekTo::Offset(o)) if o > end => bail!(
                "offset {o} is past the end of {topic}/{q} ({end}); \
                 use --from latest to wait for new messages"
            ),
            From::Seek(SeekTo::Offset(o)) if o < start => bail!(
                "offset {o} of {topic}/{q} was deleted by retention; the queue starts at {start}"
            ),
            From::Seek(seek) => seek,
        };
        consumer.seek(q, target).await?;
    }
    let at_end = |consumer: &Consumer| {
        consumer
            .positions()
            .iter()
            .all(|(q, p)| p.unwrap_or(0) >= ends.get(q).copied().unwrap_or(0))
    };
    let mut printed = 0u64;
    while count.is_none_or(|c| printed < c) {
        if exit_at_end && at_end(&consumer) {
            break;
        }
        let messages = consumer.poll().await?;
        print_messages(messages, count, &mut printed, output)?;
    }
    Ok(())
}

/// How `consume --group` reads.
struct GroupRead {
    /// Exit after this many messages.
    count: Option<u64>,
    /// Where a queue the group never committed starts.
    reset: ResetArg,
    /// Exit once this member's queues are at the ends they had at the start.
    exit_at_end: bool,
}

/// Each queue's log end of `topic`, asked of its leader.
async fn queue_ends(client: &Client, topic: &str) -> Result<std::collections::BTreeMap<u32, u64>> {
    let queues = client.topic_queues(topic).await?;
    let mut ends = std::collections::BTreeMap::new();
    for queue in 0..queues {
        let body =
            raftmq_client::pb::request::Body::ListOffsets(raftmq_client::pb::ListOffsetsRequest {
                topic: topic.to_owned(),
                queue,
                spec: raftmq_client::pb::OffsetSpec::Latest as i32,
                timestamp_ms: 0,
            });
        match client.request_queue(topic, queue, body).await? {
            raftmq_client::pb::response::Body::ListOffsets(r) => {
                ends.insert(queue, r.offset);
            }
            other => bail!("unexpected answer to a log-end lookup of {topic}/{queue}: {other:?}"),
        }
    }
    Ok(ends)
}

async fn consume_group(
    client: &Client,
    topic: &str,
    group: &str,
    output: &Output,
    how: GroupRead,
) -> Result<()> {
    let GroupRead {
        count,
        reset,
        exit_at_end,
    } = how;
    let mut config = GroupConfig::default();
    config.consumer.reset = match reset {
        ResetArg::Earliest => OffsetReset::Earliest,
        ResetArg::Latest => OffsetReset::Latest,
    };
    // The ends when the command started: the member exits once its queues reach
    // them, whatever is written after.
    let ends = if exit_at_end {
        Some(queue_ends(client, topic).await?)
    } else {
        None
    };
    let mut member = GroupConsumer::join(client, group, topic, config).await?;
    // At the end only once something is assigned: a member that joined while the
    // others hold every queue waits for its share, as kcat's -G -e does.
    let at_end = |member: &GroupConsumer, ends: &std::collections::BTreeMap<u32, u64>| {
        let assigned = member.assignment();
        !assigned.is_empty()
            && assigned.iter().all(|q| {
                let end = ends.get(q).copied().unwrap_or(0);
                member
                    .positions()
                    .get(q)
                    .copied()
                    .flatten()
                    .is_some_and(|p| p >= end)
                    || end == 0
            })
    };
    let mut printed = 0u64;
    let mut stop = std::pin::pin!(stop_signal()?);
    while count.is_none_or(|c| printed < c) {
        if ends.as_ref().is_some_and(|ends| at_end(&member, ends)) {
            break;
        }
        let messages = tokio::select! {
            // Ctrl-C or SIGTERM: commit what was printed, leave, exit 0.
            _ = &mut stop => break,
            m = member.poll() => m?,
        };
        let unprinted = print_messages(messages, count, &mut printed, output)?;
        // Commit only what was printed: move each queue back to its first message
        // not printed (messages of a queue come in offset order).
        let mut rewound = std::collections::BTreeSet::new();
        for m in unprinted {
            if rewound.insert(m.queue) {
                member.seek(m.queue, m.offset);
            }
        }
    }
    // Leaving commits what was printed (auto-commit) and hands the queues over now.
    member.leave().await?;
    Ok(())
}

/// Resolves on SIGINT or SIGTERM. The handlers are installed here, when called (not
/// when first polled), so a signal that comes before the first poll is not lost.
fn stop_signal() -> Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    let mut term = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = term.recv() => {}
        }
    })
}

/// Prints messages in `output`'s shape up to `count` in all; returns the messages
/// left unprinted because the count was reached.
fn print_messages(
    messages: Vec<ConsumedMessage>,
    count: Option<u64>,
    printed: &mut u64,
    output: &Output,
) -> Result<Vec<ConsumedMessage>> {
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let mut messages = messages.into_iter();
    for m in messages.by_ref() {
        if count.is_some_and(|c| *printed >= c) {
            let mut rest = vec![m];
            rest.extend(messages);
            out.flush()?;
            return Ok(rest);
        }
        output.write(&mut out, &m)?;
        *printed += 1;
    }
    out.flush()?;
    Ok(Vec::new())
}

async fn group(client: &Client, command: GroupCommand) -> Result<()> {
    let admin = Admin::new(client);
    match command {
        GroupCommand::List => {
            for g in admin.list_groups().await? {
                out!("{g}");
            }
        }
        GroupCommand::Describe { group } => {
            let d = admin.describe_group(&group).await?;
            out!("group {} generation {}", d.group, d.generation);
            out!("member\tclient\tassignment");
            for m in &d.members {
                let queues: Vec<String> = m
                    .assignment
                    .iter()
                    .map(|tq| format!("{}/{}", tq.topic, tq.queue))
                    .collect();
                out!("{}\t{}\t{}", m.member_id, m.client_id, queues.join(","));
            }
            out!("topic\tqueue\tcommitted\tlog_end\tlag");
            for q in &d.queues {
                let committed = if q.has_committed {
                    q.committed.to_string()
                } else {
                    "-".into()
                };
                // A queue whose group's leader did not answer: its end is unknown.
                let (log_end, lag) = if q.log_end_unknown {
                    ("?".to_string(), "?".to_string())
                } else {
                    (q.log_end.to_string(), q.lag.to_string())
                };
                out!("{}\t{}\t{committed}\t{log_end}\t{lag}", q.topic, q.queue);
            }
        }
        GroupCommand::Reset {
            group,
            topic,
            to,
            create,
        } => {
            let target = parse_reset_target(&to).context("--to")?;
            if !create {
                match admin.describe_group(&group).await {
                    Ok(_) => {}
                    Err(e)
                        if matches!(e.server_error(), Some(ServerError::UnknownGroup { .. })) =>
                    {
                        bail!("group {group:?} does not exist (check the name; --create makes it)")
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            let offsets = admin.reset_group_offsets(&group, &topic, target).await?;
            out!("topic\tqueue\toffset");
            for o in offsets {
                out!("{}\t{}\t{}", o.topic, o.queue, o.offset);
            }
        }
    }
    Ok(())
}

fn print_moves(moved: &[raftmq_client::pb::GroupReplicas]) -> Result<()> {
    for m in moved {
        let replicas: Vec<String> = m.replicas.iter().map(u64::to_string).collect();
        out!("group {} -> replicas {}", m.group_id, replicas.join(","));
    }
    Ok(())
}

async fn cluster(client: &Client, command: ClusterCommand) -> Result<()> {
    let admin = Admin::new(client);
    match command {
        ClusterCommand::Status => {
            out!(
                "node\taddress\trole\tterm\tleader\tlast_index\tcommit_index\tapplied_index\track"
            );
            let statuses = admin.cluster_status().await?;
            let mut peers = Vec::new();
            for n in &statuses {
                match &n.status {
                    Ok(s) => {
                        out!(
                            "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}",
                            n.node_id,
                            n.address,
                            s.role,
                            s.term,
                            s.leader_id,
                            s.last_index,
                            s.commit_index,
                            s.applied_index,
                            n.rack.as_deref().unwrap_or("-")
                        );
                        if s.role == "leader" {
                            peers = s.peers.clone();
                        }
                    }
                    Err(e) => out!("{}\t{}\tunreachable: {e}", n.node_id, n.address),
                }
            }
            let groups: Vec<_> = statuses
                .iter()
                .filter_map(|n| n.status.as_ref().ok().map(|s| (n.node_id, s)))
                .flat_map(|(node, s)| s.groups.iter().map(move |g| (g.group_id, node, g)))
                .collect();
            if !groups.is_empty() {
                let mut groups = groups;
                groups.sort_by_key(|(group, node, _)| (*group, *node));
                // Each group's log end as its leader (the newest that answered)
                // sees it: a replica's lag is how far its log is behind.
                let mut leader_ends: std::collections::BTreeMap<u32, (u64, u64)> =
                    Default::default();
                for (group, _, g) in groups.iter().filter(|(_, _, g)| g.role == "leader") {
                    let end = leader_ends.entry(*group).or_insert((g.term, g.last_index));
                    if g.term > end.0 {
                        *end = (g.term, g.last_index);
                    }
                }
                out!();
                out!(
                    "data group\tnode\trole\tterm\tleader\tpreferred\tlast_index\tcommit_index\tlag\tmembers\tplaced"
                );
                for (group, node, g) in groups {
                    let lag = leader_ends
                        .get(&group)
                        .map_or("-".to_string(), |&(_, end)| {
                            end.saturating_sub(g.last_index).to_string()
                        });
                    let ids =
                        |v: &[u64]| v.iter().map(u64::to_string).collect::<Vec<_>>().join(",");
                    let mut members = ids(&g.voters);
                    if !g.learners.is_empty() {
                        members = format!("{members}+learners:{}", ids(&g.learners));
                    }
                    let mut placed = g.replicas.clone();
                    placed.sort_unstable();
                    // A replica on a node the group left (decommissioned) keeps
                    // its last view: it is not moving, it is gone.
                    let left = !g.replicas.is_empty() && !g.replicas.contains(&node);
                    let moving = !left
                        && (g.replicas.is_empty() || !g.learners.is_empty() || placed != g.voters);
                    out!(
                        "{group}\t{node}\t{}\t{}\t{}\t{}\t{}\t{}\t{lag}\t{members}\t{}{}",
                        g.role,
                        g.term,
                        g.leader_id,
                        g.preferred_leader_id,
                        g.last_index,
                        g.commit_index,
                        ids(&g.replicas),
                        if left {
                            " (left: replica not placed here)"
                        } else if moving {
                            " (moving)"
                        } else if g.quiesced {
                            " (quiesced)"
                        } else {
                            ""
                        }
                    );
                }
            }
            if !peers.is_empty() {
                out!();
                out!("peer\tkind\tmatch_index\tnext_index\tlag\tactive");
                for p in peers {
                    out!(
                        "{}\t{}\t{}\t{}\t{}\t{}",
                        p.node_id,
                        if p.voter { "voter" } else { "learner" },
                        p.match_index,
                        p.next_index,
                        p.lag,
                        p.active
                    );
                }
            }
            // The membership as the most advanced node that answered sees it.
            let view = statuses
                .iter()
                .filter_map(|n| n.status.as_ref().ok())
                .max_by_key(|s| (s.role == "leader", s.membership_index));
            if let Some(s) = view {
                out!();
                out!(
                    "cluster {:016x}: membership at index {}{}",
                    s.cluster_id,
                    s.membership_index,
                    if s.membership_change_pending {
                        " (change in flight)"
                    } else {
                        ""
                    }
                );
                out!("member\tkind\taddress\tincarnation");
                for m in &s.members {
                    out!(
                        "{}\t{}\t{}\t{:016x}",
                        m.node_id,
                        if m.voter { "voter" } else { "learner" },
                        m.address,
                        m.incarnation
                    );
                }
            }
        }
        ClusterCommand::AddNode { node } => {
            let index = admin.add_node(node).await?;
            out!("node {node} is a voter (membership entry {index})");
        }
        ClusterCommand::RemoveNode { node, force } => {
            if !force {
                let still = admin.groups_listing(node).await?;
                if !still.is_empty() {
                    let list = still
                        .iter()
                        .map(u32::to_string)
                        .collect::<Vec<_>>()
                        .join(", ");
                    bail!(
                        "node {node} is still a member of data group(s) {list}: their replicas \
                         are moving off it (after `raftmq cluster decommission {node}`) or it \
                         was never decommissioned. Wait until `raftmq cluster status` shows \
                         none of them moving, then remove it; `--force` removes it now"
                    );
                }
            }
            let index = admin.remove_node(node).await?;
            out!("node {node} removed (membership entry {index})");
        }
        ClusterCommand::Decommission { node } => {
            let moved = admin.move_replicas(Some(node), 0).await?;
            out!(
                "node {node} decommissioned: {} moving",
                plural(moved.len() as u64, "data group")
            );
            print_moves(&moved)?;
        }
        ClusterCommand::Rebalance { max_moves } => {
            let moved = admin.move_replicas(None, max_moves).await?;
            out!("{} moving", plural(moved.len() as u64, "data group"));
            print_moves(&moved)?;
        }
        ClusterCommand::AddDataGroups { count } => {
            let added = admin.add_data_groups(count).await?;
            out!("{} added", plural(added.len() as u64, "data group"));
            print_moves(&added)?;
        }
        ClusterCommand::TransferLeader { node } => {
            admin.transfer_leader(node).await?;
            out!("leadership transferred to node {node}");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_targets_parse() {
        assert!(matches!(
            parse_reset_target("earliest"),
            Ok(SeekTo::Earliest)
        ));
        assert!(matches!(parse_reset_target("42"), Ok(SeekTo::Offset(42))));
        assert!(matches!(
            parse_reset_target("@1000"),
            Ok(SeekTo::Timestamp(1000))
        ));
        assert!(matches!(
            parse_reset_target("1970-01-02T00:00:01.5Z"),
            Ok(SeekTo::Timestamp(86_401_500))
        ));
        assert!(matches!(
            parse_reset_target("2000-03-01T00:00:00Z"),
            Ok(SeekTo::Timestamp(951_868_800_000))
        ));
        assert!(parse_reset_target("yesterday").is_err());
        assert!(parse_reset_target("2000-13-01T00:00:00Z").is_err());
    }
}
