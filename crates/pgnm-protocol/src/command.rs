//! The command set and the routing table: which role executes which command.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A role in the system: the router, or one of the roles that execute commands.
///
/// Each executing role reads its own inbox stream through a consumer group named
/// after the role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// The ingress: validates and routes every command.
    Router,
    /// Node registry and health.
    Checker,
    /// Persisted task list and runner.
    Scheduler,
    /// Executes JSON-RPC calls to nodes on behalf of the checker.
    JrpcProxy,
}

impl Role {
    /// Every role, in a stable order.
    pub const ALL: [Role; 4] = [Role::Router, Role::Checker, Role::Scheduler, Role::JrpcProxy];

    /// Returns the role's name as written on the wire and in key names.
    pub const fn as_str(self) -> &'static str {
        match self {
            Role::Router => "router",
            Role::Checker => "checker",
            Role::Scheduler => "scheduler",
            Role::JrpcProxy => "jrpc-proxy",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = UnknownName;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL.into_iter().find(|r| r.as_str() == s).ok_or(UnknownName)
    }
}

/// The name was not found in the closed set it was looked up in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnknownName;

macro_rules! commands {
    ($( $(#[$doc:meta])* $variant:ident = $name:literal => [$($role:ident),+] ),+ $(,)?) => {
        /// Every command pgnm accepts, under the seed system's exact names.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Command {
            $( $(#[$doc])* $variant, )+
        }

        impl Command {
            /// Every command, in the order of the routing table.
            pub const ALL: &'static [Command] = &[$(Command::$variant),+];

            /// Returns the command's wire name.
            pub const fn as_str(self) -> &'static str {
                match self { $(Command::$variant => $name,)+ }
            }

            /// Returns the roles that execute this command; a request that names no
            /// role goes to all of them.
            pub const fn roles(self) -> &'static [Role] {
                match self { $(Command::$variant => &[$(Role::$role),+],)+ }
            }
        }
    };
}

commands! {
    /// Liveness round trip through the bus; answered by every role (the router answers it itself).
    Ping = "ping" => [Checker, Scheduler, Router],
    /// Cold start: load the nodes file (checker) and create the default tasks (scheduler).
    Bootstrap = "bootstrap" => [Checker, Scheduler],
    /// Lists the scheduler's tasks.
    TaskList = "taskList" => [Scheduler],
    /// Disables a task.
    TaskStop = "taskStop" => [Scheduler],
    /// Runs a task now, once.
    TaskRun = "taskRun" => [Scheduler],
    /// Adds a task.
    TaskAdd = "taskAdd" => [Scheduler],
    /// Changes a task.
    TaskUpdate = "taskUpdate" => [Scheduler],
    /// Removes a task.
    TaskRemove = "taskRemove" => [Scheduler],
    /// Deletes finished history older than a retention period.
    PruneHistory = "pruneHistory" => [Checker, Scheduler],
    /// Runs a health-check round.
    Check = "check" => [Checker],
    /// Checks one node now.
    CheckNode = "checkNode" => [Checker],
    /// Returns the node of a chain type to use right now.
    GetBestNode = "getBestNode" => [Checker],
    /// Lists nodes.
    GetNodes = "getNodes" => [Checker],
    /// Returns one node's configuration.
    GetNodeConfig = "getNodeConfig" => [Checker],
    /// Adds a node.
    AddNode = "addNode" => [Checker],
    /// Removes a node.
    RmNode = "rmNode" => [Checker],
    /// Changes a node.
    UpdateNode = "updateNode" => [Checker],
    /// Executes a JSON-RPC call to a node.
    JrpcCall = "jrpcCall" => [JrpcProxy],
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Command {
    type Err = UnknownName;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Command::ALL.iter().copied().find(|c| c.as_str() == s).ok_or(UnknownName)
    }
}

/// Where the router sends a command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// The router answers the command itself.
    Local,
    /// One executing role.
    One(Role),
    /// Several roles: the router fans the request out and joins the replies into one.
    FanOut(Vec<Role>),
}

/// Why a command could not be routed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// The command name is not in the command set.
    #[error("unknown command {0:?}")]
    UnknownCommand(String),
    /// The role name is not a role.
    #[error("unknown role {0:?}")]
    UnknownRole(String),
    /// The role exists but does not execute this command.
    #[error("command {command} is not served by role {role}")]
    NotOnRole {
        /// The command.
        command: Command,
        /// The role that was named.
        role: Role,
    },
}

impl Route {
    /// Returns the route of `command`, optionally restricted to the role the request names.
    pub fn resolve(command: &str, role: Option<&str>) -> Result<(Command, Route), RouteError> {
        let cmd: Command = command.parse().map_err(|_| RouteError::UnknownCommand(command.to_owned()))?;
        let route = match role {
            Some(name) => {
                let role: Role = name.parse().map_err(|_| RouteError::UnknownRole(name.to_owned()))?;
                if !cmd.roles().contains(&role) {
                    return Err(RouteError::NotOnRole { command: cmd, role });
                }
                if role == Role::Router { Route::Local } else { Route::One(role) }
            }
            None => {
                let targets: Vec<Role> = cmd.roles().iter().copied().filter(|r| *r != Role::Router).collect();
                match targets.as_slice() {
                    [] => Route::Local,
                    [one] => Route::One(*one),
                    _ => Route::FanOut(targets),
                }
            }
        };
        Ok((cmd, route))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for c in Command::ALL {
            assert_eq!(c.as_str().parse::<Command>(), Ok(*c));
        }
        for r in Role::ALL {
            assert_eq!(r.as_str().parse::<Role>(), Ok(r));
        }
    }

    #[test]
    fn routes() {
        assert_eq!(Route::resolve("getBestNode", None).unwrap().1, Route::One(Role::Checker));
        assert_eq!(Route::resolve("taskList", None).unwrap().1, Route::One(Role::Scheduler));
        assert_eq!(Route::resolve("bootstrap", None).unwrap().1, Route::FanOut(vec![Role::Checker, Role::Scheduler]));
        assert_eq!(Route::resolve("bootstrap", Some("checker")).unwrap().1, Route::One(Role::Checker));
        assert_eq!(Route::resolve("ping", Some("router")).unwrap().1, Route::Local);
        assert!(matches!(Route::resolve("getbestnode", None), Err(RouteError::UnknownCommand(_))));
        assert!(matches!(Route::resolve("ping", Some("nobody")), Err(RouteError::UnknownRole(_))));
        assert!(matches!(Route::resolve("taskList", Some("checker")), Err(RouteError::NotOnRole { .. })));
    }
}
