//! The command line of `sava-admin`: every command, flag and argument with
//! its help text, and the parsers for values clap does not know.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::time::{format_rfc3339, parse_rfc3339};

/// Administer a Sava cluster over its admin API: brokers, namespaces,
/// topics, subscriptions and schemas.
#[derive(Debug, Parser)]
#[command(name = "sava-admin", version)]
#[command(
    after_help = "Errors go to stderr as one line `sava-admin: <message>`; \
    the exit status is 0 on success, 1 when a request fails and 2 for usage errors."
)]
pub(crate) struct Cli {
    #[command(flatten)]
    pub(crate) global: GlobalArgs,

    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Args)]
pub(crate) struct GlobalArgs {
    /// The broker's admin API, as http://HOST:PORT (it also serves the
    /// schema registry).
    #[arg(
        long,
        global = true,
        env = "SAVA_ADMIN_URL",
        default_value = "http://127.0.0.1:50051",
        value_name = "URL"
    )]
    pub(crate) admin_url: String,

    /// How to print results: `table` for people (fits 80 columns), `json`
    /// for scripts (the shapes are documented in the README).
    #[arg(long, global = true, value_enum, default_value_t = OutputFormat::Table, value_name = "FORMAT")]
    pub(crate) output: OutputFormat,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum OutputFormat {
    /// Aligned tables and `label: value` lists.
    Table,
    /// Pretty-printed JSON: an object, or an array for listings.
    Json,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// The brokers of the cluster.
    Brokers {
        #[command(subcommand)]
        command: BrokersCommand,
    },
    /// Namespaces and their policies.
    Namespaces {
        #[command(subcommand)]
        command: NamespacesCommand,
    },
    /// Topics: create, delete, describe, stats, unload.
    Topics {
        #[command(subcommand)]
        command: TopicsCommand,
    },
    /// Subscriptions of a topic and their cursors.
    Subscriptions {
        #[command(subcommand)]
        command: SubscriptionsCommand,
    },
    /// The schema registry: subjects and their versions.
    Schemas {
        #[command(subcommand)]
        command: SchemasCommand,
    },
    /// Tiered storage of reliable topics: local segments and the Parquet
    /// objects offloaded to the object store.
    Storage {
        #[command(subcommand)]
        command: StorageCommand,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum StorageCommand {
    /// List a topic's segments: offloaded objects and local files, per
    /// partition, oldest first.
    Segments {
        /// The topic, as /namespace/topic.
        topic: String,
    },
    /// Seal the active segment and offload every sealed one now.
    Offload {
        /// The topic, as /namespace/topic.
        topic: String,
    },
    /// Merge small offloaded objects and delete orphan objects now.
    Compact {
        /// The topic, as /namespace/topic.
        topic: String,
    },
    /// Download every offloaded Parquet object of a topic into a directory,
    /// one file per object, for tools that read Parquet.
    Export {
        /// The topic, as /namespace/topic.
        topic: String,
        /// The directory to write into; created when missing.
        #[arg(long, value_name = "DIR")]
        to: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum BrokersCommand {
    /// List the brokers of the cluster.
    List,
    /// Show the broker that leads the cluster.
    Leader,
    /// Show one broker, with the topics it owns.
    Describe {
        /// The broker's id, as `brokers list` shows it.
        id: String,
    },
    /// Hand a broker's topics to the other brokers; it takes no new ones
    /// until activated. Returns once the broker was told (it drains within a
    /// lease renewal).
    Drain {
        /// The broker's id, as `brokers list` shows it.
        id: String,
    },
    /// Let a drained broker take topics again.
    Activate {
        /// The broker's id, as `brokers list` shows it.
        id: String,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum NamespacesCommand {
    /// List the namespaces with their topic counts.
    List,
    /// Create a namespace; creating one that exists succeeds and says so.
    Create {
        /// The namespace: letters, digits, `_` and `-`.
        namespace: String,
    },
    /// Delete a namespace; one with topics is refused without --force.
    Delete {
        /// The namespace to delete.
        namespace: String,
        /// Delete the namespace's topics (and their subscriptions) with it.
        #[arg(long)]
        force: bool,
    },
    /// List the topics of a namespace.
    Topics {
        /// The namespace whose topics to list.
        namespace: String,
    },
    /// Show a namespace's policies.
    Policies {
        /// The namespace whose policies to show.
        namespace: String,
    },
    /// Set one policy of a namespace.
    #[command(
        after_help = "Keys: auto_create_topics (true|false: create topics on first use), \
        max_message_bytes (a number of bytes; 0 for the broker's limit), \
        retention_age_secs and retention_bytes (keep acknowledged messages of reliable \
        topics this long / up to this size; 0 for none), backlog_quota_bytes (the most \
        unacknowledged bytes a reliable topic may hold; 0 for none) and backlog_policy \
        (refuse: producers get an error over the quota; drop_oldest: the slowest \
        subscriptions skip the oldest messages)."
    )]
    SetPolicy {
        /// The namespace to change.
        namespace: String,
        /// The policy: auto_create_topics, max_message_bytes,
        /// retention_age_secs, retention_bytes, backlog_quota_bytes or
        /// backlog_policy.
        key: String,
        /// The new value: true|false, a number (0 for none or the broker's
        /// limit), or refuse|drop_oldest for backlog_policy.
        value: String,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum TopicsCommand {
    /// List topics, of one namespace or of all.
    List {
        /// Only this namespace's topics; every namespace when omitted.
        namespace: Option<String>,
    },
    /// Create a topic; creating one that exists identically succeeds and
    /// says so.
    Create {
        /// The topic, as /namespace/topic.
        topic: String,
        /// Split the topic into N partitions, named /namespace/topic-part-0
        /// and up; 0 (the default) for a topic that is not partitioned.
        #[arg(long, value_name = "N", default_value_t = 0)]
        partitions: u32,
        /// Reliable dispatch: messages are kept until every subscription
        /// acknowledges them. Without it, dispatch is non-reliable: messages
        /// go only to consumers connected at the time.
        #[arg(long)]
        reliable: bool,
        /// Check every payload against a schema of this type, registered
        /// under the topic's name as subject. None when omitted.
        #[arg(long, value_enum, value_name = "TYPE")]
        schema: Option<SchemaKind>,
        /// The JSON Schema document for --schema json (required with it).
        #[arg(
            long,
            value_name = "FILE",
            requires = "schema",
            required_if_eq("schema", "json")
        )]
        schema_file: Option<PathBuf>,
    },
    /// Delete a topic; one with subscriptions or clients is refused without
    /// --force.
    Delete {
        /// The topic, as /namespace/topic.
        topic: String,
        /// Delete it even when it has subscriptions or connected clients.
        #[arg(long)]
        force: bool,
    },
    /// Show a topic's settings: dispatch mode, partitions, schema, owner.
    Describe {
        /// The topic, as /namespace/topic.
        topic: String,
    },
    /// Show a topic's traffic, storage, producers and subscriptions (summed
    /// over its partitions).
    Stats {
        /// The topic, as /namespace/topic.
        topic: String,
    },
    /// Unload a topic from its broker; it is loaded again on next use.
    Unload {
        /// The topic, as /namespace/topic.
        topic: String,
    },
    /// Show a topic's own policies and the ones that apply to it.
    Policies {
        /// The topic, as /namespace/topic.
        topic: String,
    },
    /// Set one policy of a topic, over its namespace's.
    #[command(
        after_help = "Keys: retention_age_secs and retention_bytes (keep acknowledged messages \
        this long / up to this size), backlog_quota_bytes (the most unacknowledged bytes the \
        topic may hold), backlog_policy (refuse or drop_oldest). Numbers: 0 for none, whatever \
        the namespace says. Any key takes `inherit` to go back to the namespace's value. A \
        partitioned topic's policies apply to every partition."
    )]
    SetPolicy {
        /// The topic, as /namespace/topic.
        topic: String,
        /// retention_age_secs, retention_bytes, backlog_quota_bytes or
        /// backlog_policy.
        key: String,
        /// A number (0 for none), refuse|drop_oldest, or inherit.
        value: String,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum SubscriptionsCommand {
    /// List a topic's subscriptions (of every partition when partitioned).
    List {
        /// The topic, as /namespace/topic.
        topic: String,
    },
    /// Create a subscription; creating one that exists with the same type
    /// succeeds and says so.
    Create {
        /// The topic, as /namespace/topic (a partition for partitioned
        /// topics).
        topic: String,
        /// The subscription's name.
        subscription: String,
        /// How the subscription's consumers share its messages.
        #[arg(long = "type", value_enum, value_name = "TYPE", default_value_t = SubscriptionKind::Exclusive)]
        kind: SubscriptionKind,
        /// Where the subscription starts: earliest, latest, offset:N (the
        /// message at offset N) or time:RFC3339 (the first message published
        /// at or after that time, e.g. time:2025-03-01T12:00:00Z). Default:
        /// latest.
        #[arg(long, value_name = "POSITION", value_parser = parse_position)]
        from: Option<Position>,
    },
    /// Delete a subscription; one with connected consumers is refused
    /// without --force.
    Delete {
        /// The topic, as /namespace/topic.
        topic: String,
        /// The subscription's name.
        subscription: String,
        /// Delete it even when consumers are connected (they are closed).
        #[arg(long)]
        force: bool,
    },
    /// Move a reliable subscription's cursor; messages after it are
    /// delivered again.
    Reset {
        /// The topic, as /namespace/topic.
        topic: String,
        /// The subscription's name.
        subscription: String,
        /// The new position: earliest, latest, offset:N (redeliver from
        /// offset N) or time:RFC3339 (from the first message published at or
        /// after that time, e.g. time:2025-03-01T12:00:00Z).
        #[arg(long, value_name = "POSITION", value_parser = parse_position)]
        to: Position,
    },
    /// Set a reliable subscription's redelivery rule: ack_timeout_ms
    /// (redeliver what is not acknowledged in time; 0 turns it off),
    /// max_deliveries (0: no limit) or on_max_deliveries (dead-letter:
    /// publish to <topic>-<subscription>-dlq; drop; block).
    SetPolicy {
        /// The topic, as /namespace/topic (a partition for partitioned
        /// topics).
        topic: String,
        /// The subscription's name.
        subscription: String,
        /// ack_timeout_ms, max_deliveries or on_max_deliveries.
        key: String,
        /// The new value: milliseconds, a count, or dead-letter|drop|block.
        value: String,
    },
    /// Show a subscription: cursor, backlog, delivery counts, consumers.
    Describe {
        /// The topic, as /namespace/topic.
        topic: String,
        /// The subscription's name.
        subscription: String,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum SchemasCommand {
    /// Register a schema as the next version of a subject; registering the
    /// latest version again changes nothing.
    Register {
        /// The subject, e.g. a topic's name or a shared name like `events`.
        subject: String,
        /// The schema's type.
        #[arg(long = "type", value_enum, value_name = "TYPE")]
        kind: SchemaKind,
        /// The schema definition: a JSON Schema document for --type json
        /// (required with it); optional for the other types.
        #[arg(long, value_name = "FILE", required_if_eq("kind", "json"))]
        file: Option<PathBuf>,
    },
    /// Show a subject's latest schema, or one version of it.
    Get {
        /// The subject.
        subject: String,
        /// The version to show; the latest when omitted.
        #[arg(long, value_name = "N")]
        version: Option<u32>,
    },
    /// List the versions of a subject.
    Versions {
        /// The subject.
        subject: String,
    },
    /// Check whether a schema could be registered as the subject's next
    /// version under its compatibility mode; exits 1 when it could not.
    Check {
        /// The subject.
        subject: String,
        /// The new schema's type.
        #[arg(long = "type", value_enum, value_name = "TYPE")]
        kind: SchemaKind,
        /// The new schema definition: a JSON Schema document for --type
        /// json (required with it); optional for the other types.
        #[arg(long, value_name = "FILE", required_if_eq("kind", "json"))]
        file: Option<PathBuf>,
    },
    /// Set which changes a subject's new versions may make.
    SetCompatibility {
        /// The subject.
        subject: String,
        /// The mode: none, backward, forward or full (see below).
        #[arg(value_enum)]
        mode: CompatibilityMode,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum SchemaKind {
    /// Any bytes.
    Bytes,
    /// UTF-8 text.
    String,
    /// An 8-byte integer.
    Int64,
    /// JSON checked against a JSON Schema document.
    Json,
}

impl SchemaKind {
    /// The name the schema registry uses for this type.
    pub(crate) fn registry_name(self) -> &'static str {
        match self {
            SchemaKind::Bytes => "bytes",
            SchemaKind::String => "string",
            SchemaKind::Int64 => "int64",
            SchemaKind::Json => "json_schema",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum SubscriptionKind {
    /// One consumer at a time; others are refused.
    Exclusive,
    /// Messages spread over every consumer.
    Shared,
    /// One active consumer; the next takes over when it leaves.
    Failover,
    /// Messages spread by key; each key goes to one consumer.
    KeyShared,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum CompatibilityMode {
    /// Any change that keeps the type.
    None,
    /// Readers of the new version can read old data.
    Backward,
    /// Readers of the old version can read new data.
    Forward,
    /// Both backward and forward.
    Full,
}

impl CompatibilityMode {
    /// The name the schema registry uses for this mode.
    pub(crate) fn registry_name(self) -> &'static str {
        match self {
            CompatibilityMode::None => "none",
            CompatibilityMode::Backward => "backward",
            CompatibilityMode::Forward => "forward",
            CompatibilityMode::Full => "full",
        }
    }
}

/// A position in a topic, for `--from` and `--to`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Position {
    Earliest,
    Latest,
    Offset(u64),
    /// Milliseconds since the Unix epoch.
    Time(u64),
}

impl std::fmt::Display for Position {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Position::Earliest => f.write_str("earliest"),
            Position::Latest => f.write_str("latest"),
            Position::Offset(offset) => write!(f, "offset {offset}"),
            Position::Time(ms) => write!(f, "time {}", format_rfc3339(*ms)),
        }
    }
}

/// Parses `earliest`, `latest`, `offset:N` or `time:RFC3339`.
pub(crate) fn parse_position(text: &str) -> Result<Position, String> {
    match text {
        "earliest" => return Ok(Position::Earliest),
        "latest" => return Ok(Position::Latest),
        _ => {}
    }
    if let Some(offset) = text.strip_prefix("offset:") {
        return offset
            .parse()
            .map(Position::Offset)
            .map_err(|_| format!("offset {offset:?} is not a whole number"));
    }
    if let Some(time) = text.strip_prefix("time:") {
        return parse_rfc3339(time).map(Position::Time);
    }
    Err(format!(
        "{text:?} is not a position; expected earliest, latest, offset:N or time:RFC3339"
    ))
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn the_command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn positions_parse_from_their_four_forms() {
        assert_eq!(parse_position("earliest"), Ok(Position::Earliest));
        assert_eq!(parse_position("latest"), Ok(Position::Latest));
        assert_eq!(parse_position("offset:42"), Ok(Position::Offset(42)));
        assert_eq!(
            parse_position("time:1970-01-01T00:00:01Z"),
            Ok(Position::Time(1_000))
        );
    }

    #[test]
    fn malformed_positions_are_refused_with_the_expected_forms() {
        assert!(parse_position("offset:-1").is_err());
        assert!(parse_position("time:soon").is_err());
        let error = parse_position("start").unwrap_err();
        assert!(
            error.contains("earliest, latest, offset:N or time:RFC3339"),
            "{error}"
        );
    }
}
