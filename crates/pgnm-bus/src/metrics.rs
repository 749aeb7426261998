//! The transport's Prometheus metrics. Label values come from closed sets
//! (roles, known command names, error codes), never from message contents.

use std::time::Instant;

use pgnm_protocol::{Command, ErrorCode};

/// Commands taken off a stream, by role and command.
pub const RECEIVED: &str = "pgnm_commands_received_total";
/// Commands answered (or forwarded), by role, command and outcome code.
pub const ANSWERED: &str = "pgnm_commands_answered_total";
/// Time from taking a command off the stream to answering it, by role and command.
pub const DURATION: &str = "pgnm_command_duration_seconds";
/// Entries being handled by this instance now, by group.
pub const IN_FLIGHT: &str = "pgnm_entries_in_flight";
/// Entries delivered to the group but not acknowledged (all consumers), by group.
pub const PENDING: &str = "pgnm_stream_pending";
/// Entries in the stream not yet delivered to the group, by group.
pub const LAG: &str = "pgnm_stream_lag";
/// Entries taken over from a silent consumer, by group.
pub const RECLAIMED: &str = "pgnm_entries_reclaimed_total";
/// Entries moved to the dead-letter stream, by group.
pub const DEAD_LETTERED: &str = "pgnm_entries_dead_lettered_total";

/// Outcome label of a command answered with data.
pub const OK: &str = "OK";
/// Outcome label of a command the router passed on to a role.
pub const FORWARDED: &str = "FORWARDED";
/// Outcome label of a repeated request id answered from the stored reply.
pub const REPLAYED: &str = "REPLAYED";

/// Describes every metric of the transport (the `# HELP` lines).
pub fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(RECEIVED, "Commands taken off a stream, by role and command");
    describe_counter!(
        ANSWERED,
        "Commands answered, by role, command and code (OK, an error code, FORWARDED, REPLAYED)"
    );
    describe_histogram!(DURATION, Unit::Seconds, "Time from reading a command to answering it");
    describe_gauge!(IN_FLIGHT, "Entries this instance is handling now");
    describe_gauge!(PENDING, "Entries delivered to the group and not yet acknowledged, all consumers");
    describe_gauge!(LAG, "Entries in the stream not yet delivered to the group");
    describe_counter!(RECLAIMED, "Entries taken over from a consumer that went silent");
    describe_counter!(DEAD_LETTERED, "Entries moved to the dead-letter stream");
}

/// Returns the command's name when it is a known command, `unknown` otherwise.
pub fn command_label(name: &str) -> &'static str {
    name.parse::<Command>().map(Command::as_str).unwrap_or("unknown")
}

/// One command being handled: counts it on creation, and its outcome once.
#[derive(Debug)]
pub struct CommandTimer {
    role: &'static str,
    command: &'static str,
    started: Instant,
}

impl CommandTimer {
    /// Counts a command of `role` named `command` as received.
    pub fn start(role: &'static str, command: &str) -> Self {
        let command = command_label(command);
        metrics::counter!(RECEIVED, "role" => role, "command" => command).increment(1);
        CommandTimer { role, command, started: Instant::now() }
    }

    /// Records the outcome `code` and the time taken.
    pub fn finish(&self, code: &'static str) {
        metrics::counter!(ANSWERED, "role" => self.role, "command" => self.command, "code" => code).increment(1);
        metrics::histogram!(DURATION, "role" => self.role, "command" => self.command)
            .record(self.started.elapsed().as_secs_f64());
    }

    /// Records an error outcome.
    pub fn failed(&self, code: ErrorCode) {
        self.finish(code.as_str());
    }
}
