//! Typed calls. Every message a service answers knows how it goes into a frame and
//! which reply it gets back, so `RpcClient::request` hands the caller that reply, and a
//! reply of any other kind becomes `RpcError::UnexpectedReply` here, in one place.
//! Servers take their own service's request enum out of a frame (`TryFrom<Body>`).

use crate::proto::frame::Body;
use crate::proto::*;

/// A message that a service answers with a `Reply`.
pub trait Request: Into<Body> + Send + 'static {
    type Reply: Send + 'static;
    /// The message's name, for errors.
    const NAME: &'static str;
    /// The reply in `body`, or `None` when `body` holds another message.
    fn reply_from(body: Body) -> Option<Self::Reply>;
}

/// For one service: its request and reply enums in and out of a frame body, each of its
/// messages into a frame body, for each message answered its reply type, and each
/// request's name (metrics label requests by it). Every request of the service must be
/// listed, one-way or call: the names' `match` does not compile otherwise.
/// `$Body($Request, $request_mod) -> $Reply($reply_mod)` names the frame body variant
/// and message of the requests, and the message of the replies (whose body variant has
/// the same name).
macro_rules! service {
    (
        $Body:ident($Request:ident, $request_mod:ident) -> $Reply:ident($reply_mod:ident);
        one_way: $($one_way:ident),*;
        calls: $($message:ident => $reply:ident),* $(,)?
    ) => {
        impl From<$request_mod::Request> for Body {
            fn from(request: $request_mod::Request) -> Body {
                Body::$Body($Request { request: Some(request) })
            }
        }

        impl TryFrom<Body> for $request_mod::Request {
            type Error = Body;
            fn try_from(body: Body) -> Result<Self, Body> {
                match body {
                    Body::$Body($Request { request: Some(request) }) => Ok(request),
                    other => Err(other),
                }
            }
        }

        impl $request_mod::Request {
            /// The request message's name, as Ray's metrics label a method.
            pub fn name(&self) -> &'static str {
                match self {
                    $(Self::$one_way(_) => stringify!($one_way),)*
                    $(Self::$message(_) => stringify!($message),)*
                }
            }
        }

        impl From<$reply_mod::Reply> for Body {
            fn from(reply: $reply_mod::Reply) -> Body {
                Body::$Reply($Reply { reply: Some(reply) })
            }
        }

        $(
            impl From<$one_way> for Body {
                fn from(message: $one_way) -> Body {
                    $request_mod::Request::$one_way(message).into()
                }
            }
        )*

        $(
            impl From<$message> for Body {
                fn from(message: $message) -> Body {
                    $request_mod::Request::$message(message).into()
                }
            }

            impl Request for $message {
                type Reply = $reply;
                const NAME: &'static str = stringify!($message);
                fn reply_from(body: Body) -> Option<$reply> {
                    match body {
                        Body::$Reply($Reply { reply: Some($reply_mod::Reply::$reply(reply)) }) => Some(reply),
                        _ => None,
                    }
                }
            }
        )*
    };
}

service! {
    Gcs(GcsRequest, gcs_request) -> GcsReply(gcs_reply);
    one_way: LeaseLost;
    calls:
        GetNodes => GetNodesReply,
        RegisterNode => GetNodesReply,
        ReportResources => GetNodesReply,
        AddJob => AddJobReply,
        MarkJobFinished => Ack,
        ReportWorker => Ack,
        AddTaskEvents => Ack,
        GetTimeline => GetTimelineReply,
        KvPut => Ack,
        KvGet => KvGetReply,
        CreateActor => ActorInfo,
        ActorArgsReady => Ack,
        WaitActor => ActorInfo,
        GetNamedActor => ActorInfo,
        KillActor => Ack,
        ListActors => ListActorsReply,
        CreatePlacementGroup => PlacementGroupInfo,
        RemovePlacementGroup => Ack,
        WaitPlacementGroup => PlacementGroupInfo,
        GetPlacementGroup => PlacementGroupInfo,
        ListPlacementGroups => ListPlacementGroupsReply,
}

service! {
    NodeManager(NodeManagerRequest, node_manager_request) -> NodeManagerReply(node_manager_reply);
    one_way: NotifyBlocked, NotifyUnblocked, PrepareRuntimeEnv;
    calls:
        RegisterClient => RegisterClientReply,
        RequestLease => RequestLeaseReply,
        ReturnLease => Ack,
        KillLeasedWorker => Ack,
        ShrinkLease => Ack,
        PrepareBundle => Ack,
        CommitBundle => Ack,
        ReleaseBundle => Ack,
        PlacementGroupRemoved => Ack,
        PullObject => Ack,
        FreeObjects => Ack,
        Shutdown => Ack,
        ListLogs => ListLogsReply,
        ReadLog => ReadLogReply,
        ReportMetrics => Ack,
        GetClusterView => GetClusterViewReply,
        ListSpilledObjects => ListSpilledObjectsReply,
}

service! {
    CoreWorker(CoreWorkerRequest, core_worker_request) -> CoreWorkerReply(core_worker_reply);
    one_way: CancelTask, RemoveBorrower;
    calls:
        PushTask => PushTaskReply,
        GetObject => GetObjectReply,
        AddBorrower => Ack,
        WorkerOutput => Ack,
        GetObjectRefs => GetObjectRefsReply,
        ReportGeneratorItem => Ack,
}

service! {
    Plasma(PlasmaRequest, plasma_request) -> PlasmaReply(plasma_reply);
    one_way: PlasmaRelease;
    calls:
        PlasmaCreate => PlasmaCreateReply,
        PlasmaSeal => Ack,
        PlasmaGet => PlasmaGetReply,
        PlasmaDelete => Ack,
        PlasmaListSpilled => PlasmaListSpilledReply,
}

impl From<ErrorReply> for Body {
    fn from(error: ErrorReply) -> Body {
        Body::Error(error)
    }
}
