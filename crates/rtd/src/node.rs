//! One node daemon: the raylet and the plasma store, plus the GCS on the head node.
//!
//! Clients (drivers and workers) talk to the daemon over two Unix sockets in the
//! session directory: `raylet.sock` for leases, node and KV requests, `plasma.sock`
//! for the object store. The store's memory is one file in `/dev/shm`. Everything the
//! daemon created (sockets, the shared-memory file, spill files, workers) is removed
//! when it stops, whether by SIGTERM/SIGINT, a `Shutdown` request, or its parent
//! closing the pipe on the daemon's stdin (the driver that started it died).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context as _, Result};
use rtd_common::cluster_kv;
use rtd_common::proto::{KvGet, KvGetReply, NodeInfo, ResourceMap};
use rtd_common::rpc::{self, ConnectionCache, RpcClient};
use rtd_common::{NodeId, ResourceSet};
use rtd_dashboard::jobs::env::RuntimeEnvSetup;
use rtd_dashboard::jobs::{JobManager, JobsConfig, ProcessLauncher};
use rtd_gcs::client::{GcsClient, HeadLink};
use rtd_gcs::server::GcsServer;
use rtd_gcs::store::{OpenedStore, StorageConfig};
use rtd_metrics::{MetricsRegistry, NodeLabels, RequestLatencies, UserMetrics};
use rtd_object_manager::ObjectServer;
use rtd_plasma::{ObjectStore, PlasmaClient, PlasmaService, ShmRegion};
use rtd_raylet::gcs_link::{reconnect_timeout, run_link, GrpcHead, HeadPackages, HeadRaylet};
use rtd_raylet::lease::Raylet;
use rtd_raylet::service::{NodeService, ProcessTable};
use rtd_raylet::worker_pool::WorkerCommand;
use rtd_runtime_env::setup::KvLookup;
use tokio::net::TcpListener;
use tokio::sync::Notify;

use crate::metrics::{ClusterMetrics, NodeMetrics};
use crate::session::{process_gone, NodeFile, Session};

#[derive(Debug, Clone)]
pub enum NodeRole {
    /// Hosts the GCS; other nodes join it on `port` (None: a lone local node).
    Head { port: Option<u16> },
    /// Joins the cluster whose head is at `head_address` (`host:port`).
    Worker { head_address: String },
}

#[derive(Debug, Clone)]
pub struct NodeOptions {
    pub session_dir: PathBuf,
    pub resources: ResourceSet,
    pub object_store_memory: u64,
    pub python: String,
    /// Stop when stdin reaches EOF (the parent process is gone).
    pub watch_stdin: bool,
    pub role: NodeRole,
    /// The address other nodes reach this one at.
    pub node_ip: String,
    /// Spill into a directory of this node's own under here (`--system-config`'s
    /// `object_spilling_config`); None: into the session directory.
    pub spill_root: Option<PathBuf>,
    /// Where the head serves the dashboard and state API; None: it does not.
    pub dashboard: Option<DashboardOptions>,
    /// Where `/metrics` is served (`--metrics-export-port`); None: a free port.
    pub metrics_export_port: Option<u16>,
    /// Where the head's GCS keeps its tables (unused on other nodes).
    pub gcs_storage: StorageConfig,
}

/// `--dashboard-host` and `--dashboard-port`.
#[derive(Debug, Clone, PartialEq)]
pub struct DashboardOptions {
    pub host: String,
    pub port: rtd_dashboard::Port,
}

/// What the head's job manager needs to know of the node it runs on.
struct JobsContext {
    logs_dir: PathBuf,
    /// The address a job's `rtd.init()` connects to.
    cluster_address: String,
    node_id: NodeId,
    python: String,
    /// The node's cache of runtime environments.
    runtime_resources: PathBuf,
}

/// Starts serving the dashboard (with the jobs API) over `gcs`; returns the task, the
/// job manager, and the `host:port` a browser on this machine opens (the node's
/// address when it listens on every one).
async fn start_dashboard(
    options: &DashboardOptions,
    gcs: &Arc<GcsServer>,
    node_ip: &str,
    metrics: Arc<MetricsRegistry>,
    jobs: JobsContext,
) -> Result<(tokio::task::JoinHandle<()>, Arc<JobManager>, String)> {
    let listener = rtd_dashboard::bind(&options.host, options.port).await?;
    let port = listener.local_addr().context("reading the dashboard's address")?.port();
    let host = match options.host.as_str() {
        "0.0.0.0" | "::" | "[::]" => node_ip,
        host => host,
    };
    let url = format!("{host}:{port}");
    gcs.kv_put(cluster_kv::DASHBOARD_URL_KEY, url.clone().into());
    let packages = gcs.clone();
    let python = jobs.python.clone();
    let manager = JobManager::new(
        gcs.clone(),
        Arc::new(ProcessLauncher),
        Arc::new(RuntimeEnvSetup {
            packages: Arc::new(KvLookup(move |uri: &str| packages.kv_get(uri))),
            cache_root: jobs.runtime_resources,
            python: jobs.python,
        }),
        JobsConfig {
            logs_dir: jobs.logs_dir,
            cluster_address: jobs.cluster_address,
            node_id: jobs.node_id.hex(),
            dashboard_url: format!("http://{url}"),
            env: entrypoint_path(&python).into_iter().collect(),
            stop_grace: job_stop_grace(),
        },
    );
    let also = rtd_metrics::http::router(metrics).merge(rtd_dashboard::jobs::router(manager.clone()));
    Ok((rtd_dashboard::serve(listener, gcs.clone(), also), manager, url))
}

/// `PATH` for job entrypoints with the directory of the node's Python first, so the
/// `python` of an entrypoint is the one rtd runs (its virtual environment's).
fn entrypoint_path(python: &str) -> Option<(String, String)> {
    let dir = Path::new(python).parent().filter(|d| d.is_absolute())?;
    let path = std::env::var("PATH").unwrap_or_default();
    Some(("PATH".into(), format!("{}:{path}", dir.display())))
}

/// Ray's `RAY_JOB_STOP_WAIT_TIME_S` (default 3): how long a stopped job's entrypoint
/// has between SIGTERM and SIGKILL.
fn job_stop_grace() -> Duration {
    let seconds = std::env::var("RTD_JOB_STOP_WAIT_TIME_S").ok().and_then(|v| v.parse::<f64>().ok());
    seconds.filter(|s| s.is_finite() && *s >= 0.0).map(Duration::from_secs_f64).unwrap_or(Duration::from_secs(3))
}

/// How a node describes itself to the GCS.
fn describe_node(
    raylet: &Raylet,
    session: &Session,
    node_ip: &Option<String>,
    raylet_address: &str,
    is_head: bool,
) -> NodeInfo {
    NodeInfo {
        node_id: raylet.node_id().to_vec().into(),
        address: node_ip.clone().unwrap_or_else(|| "127.0.0.1".into()),
        alive: true,
        total: Some(ResourceMap { amounts: raylet.total().to_fixed_map() }),
        available: Some(ResourceMap { amounts: raylet.available().to_fixed_map() }),
        session_dir: session.dir.display().to_string(),
        raylet_socket: session.raylet_socket().display().to_string(),
        plasma_socket: session.plasma_socket().display().to_string(),
        raylet_address: raylet_address.to_string(),
        is_head,
        // The GCS stamps the times when it registers the node.
        ..Default::default()
    }
}

const JOIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Runs a node until it is told to stop. Blocks the calling thread.
pub fn run_node(opts: NodeOptions) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("rtd-node")
        .enable_all()
        .build()
        .context("starting the node runtime")?;
    let result = runtime.block_on(serve_node(opts));
    runtime.shutdown_timeout(std::time::Duration::from_millis(200));
    result
}

async fn serve_node(opts: NodeOptions) -> Result<()> {
    // A worker node first makes sure it can reach the head.
    let head = match &opts.role {
        NodeRole::Worker { head_address } => Some((
            tokio::time::timeout(JOIN_TIMEOUT, RpcClient::connect(head_address))
                .await
                .map_err(|_| anyhow!("cannot reach the head node at {head_address}: timed out"))?
                .map_err(|e| anyhow!("cannot reach the head node at {head_address}: {e}"))?,
            head_address.clone(),
        )),
        NodeRole::Head { .. } => None,
    };
    // The head reads its GCS's store before creating anything: a store that cannot be
    // read stops the start, leaving nothing behind.
    let gcs_store = match &opts.role {
        NodeRole::Head { .. } => Some(OpenedStore::open(opts.gcs_storage.open()?)?),
        NodeRole::Worker { .. } => None,
    };
    let cluster_mode = matches!(opts.role, NodeRole::Worker { .. } | NodeRole::Head { port: Some(_) });
    let node_ip = cluster_mode.then(|| opts.node_ip.clone());

    let session = Session::create(&opts.session_dir)?;
    let node_id = NodeId::random();
    let region = Arc::new(
        ShmRegion::create(session.shm_path(), opts.object_store_memory)
            .with_context(|| format!("creating the object store at {}", session.shm_path().display()))?,
    );
    region.set_unlink_on_drop(true);
    // A directory of its own under a shared root: other nodes may spill there too.
    let spill_dir = match &opts.spill_root {
        Some(root) => root.join(format!("rtd_spilled_objects_{}", node_id.hex())),
        None => session.dir.join("spill"),
    };
    let store = ObjectStore::new(region, spill_dir.clone());
    let plasma = PlasmaService::new(store);
    let plasma_listener = rtd_common::rpc::bind(&session.plasma_socket()).context("binding plasma.sock")?;
    let plasma_task = tokio::spawn(rtd_common::rpc::serve(plasma_listener, plasma.clone()));
    let plasma_client = PlasmaClient::connect(&session.plasma_socket().display().to_string(), session.shm_path())
        .await
        .map_err(|e| anyhow!("connecting to this node's object store: {e}"))?;

    // Other nodes reach this one over TCP: the head on its --port, others anywhere.
    let tcp_listener = match (&opts.role, &node_ip) {
        (NodeRole::Head { port: Some(port) }, Some(ip)) => {
            Some(TcpListener::bind(format!("{ip}:{port}")).await.with_context(|| format!("binding {ip}:{port}"))?)
        }
        (NodeRole::Worker { .. }, Some(ip)) => {
            Some(TcpListener::bind(format!("{ip}:0")).await.with_context(|| format!("binding {ip}"))?)
        }
        _ => None,
    };
    if let Some(addr) = tcp_listener.as_ref().and_then(|l| l.local_addr().ok()) {
        rtd_common::auth::warn_if_exposed("this node's gRPC port (GCS, raylet, object manager)", addr);
    }
    let raylet_address = match (&tcp_listener, &node_ip) {
        (Some(l), Some(ip)) => format!("{ip}:{}", l.local_addr().map(|a| a.port()).unwrap_or(0)),
        _ => String::new(),
    };

    let command = WorkerCommand {
        python: opts.python.clone(),
        raylet_socket: session.raylet_socket().display().to_string(),
        session_dir: session.dir.display().to_string(),
        node_ip: node_ip.clone(),
        fork_from_template: WorkerCommand::fork_allowed_by_env(),
    };
    let raylet = Raylet::new(node_id, opts.resources.clone(), command);
    let peers = Arc::new(ConnectionCache::default());
    let shutdown = Arc::new(Notify::new());
    let processes = Arc::new(ProcessTable::default());
    let session_name = session.dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let gcs = match (&head, gcs_store) {
        (None, Some(store)) => Some(GcsServer::start(
            describe_node(&raylet, &session, &node_ip, &raylet_address, true),
            Arc::new(HeadRaylet(raylet.clone())),
            peers.clone(),
            store,
            &session_name,
        )),
        (None, None) => return Err(anyhow!("a head node needs its GCS's store")),
        (Some(_), _) => None,
    };
    // The cluster's id labels every node's metrics: the head's first session name.
    let mut cluster_name = gcs.as_ref().map(|g| g.cluster_id());
    let gcs_link = match (&gcs, head) {
        (Some(gcs), _) => GcsClient::Local(gcs.clone()),
        (None, Some((client, head_address))) => {
            let link = HeadLink::new(client.clone(), &head_address, reconnect_timeout());
            let me = describe_node(&raylet, &session, &node_ip, &raylet_address, false);
            let head = GrpcHead { link: link.clone(), raylet: raylet.clone(), node: me, processes: processes.clone() };
            head.register(&client, false).await.map_err(|e| anyhow!("joining the cluster: {e}"))?;
            let named = client.request(KvGet { key: cluster_kv::SESSION_NAME_KEY.into(), exists_only: false }).await;
            if let Ok(KvGetReply { found: true, value }) = named {
                cluster_name = Some(String::from_utf8_lossy(&value).into_owned());
            }
            let lost_to = link.clone();
            raylet.set_lease_lost_hook(Box::new(move |lease_id| {
                // While the head is away this is dropped: registering again reports
                // the node's actor leases, and the GCS sees this one is gone.
                if let Some(head) = lost_to.client_now() {
                    let _ = head.send(rtd_common::proto::LeaseLost { node_id: node_id.to_vec().into(), lease_id });
                }
            }));
            tokio::spawn(run_link(head, shutdown.clone()));
            GcsClient::Remote(link)
        }
        (None, None) => return Err(anyhow!("a node needs a GCS: host one or join a head")),
    };
    raylet.set_package_source(match &gcs_link {
        GcsClient::Local(gcs) => {
            let gcs = gcs.clone();
            Arc::new(KvLookup(move |uri: &str| gcs.kv_get(uri)))
        }
        GcsClient::Remote(link) => Arc::new(HeadPackages(link.clone())),
    });
    let user_metrics = Arc::new(UserMetrics::default());
    let request_latencies = RequestLatencies::default();
    let service = NodeService {
        node_id,
        session_dir: session.dir.display().to_string(),
        plasma_socket: session.plasma_socket().display().to_string(),
        shm_path: session.shm_path().display().to_string(),
        shm_size: opts.object_store_memory,
        node_ip: node_ip.clone(),
        raylet: raylet.clone(),
        plasma: plasma_client,
        peers: peers.clone(),
        gcs: gcs_link,
        next_conn: AtomicU64::new(1),
        shutdown: shutdown.clone(),
        user_metrics: user_metrics.clone(),
        processes,
        request_latencies: request_latencies.clone(),
    };
    let service = Arc::new(service);
    let raylet_listener = rtd_common::rpc::bind(&session.raylet_socket()).context("binding raylet.sock")?;
    let raylet_task = tokio::spawn(rtd_common::rpc::serve(raylet_listener, service.clone()));
    // Other nodes see the raylet (and the GCS on the head) and the object manager.
    let tcp_task = match tcp_listener {
        Some(l) => {
            let mut server = rpc::grpc_server()?;
            let router = server
                .add_service(rpc::link_service(service.clone()))
                .add_service(ObjectServer::new(service.plasma.clone()));
            Some(tokio::spawn(rpc::serve_grpc(l, router)))
        }
        None => None,
    };
    // The head's registry also holds the GCS's view of the cluster; the dashboard
    // serves the same registry on its port.
    let metrics_address = node_ip.clone().unwrap_or_else(|| "127.0.0.1".into());
    let session_name = cluster_name.unwrap_or(session_name);
    let mut metrics = MetricsRegistry::new(NodeLabels { session_name, node_address: metrics_address.clone() });
    metrics.register(NodeMetrics { raylet: raylet.clone(), plasma });
    metrics.register(user_metrics);
    request_latencies.register(&mut metrics);
    if let Some(gcs) = &gcs {
        metrics.register(ClusterMetrics { gcs: gcs.clone() });
    }
    let metrics = Arc::new(metrics);
    let metrics_listener =
        rtd_metrics::http::bind(&metrics_address, opts.metrics_export_port).await.with_context(|| {
            let port = opts.metrics_export_port.unwrap_or(0);
            format!("serving metrics on {metrics_address}:{port} (choose another with --metrics-export-port)")
        })?;
    let metrics_export_port = metrics_listener.local_addr().context("reading the metrics port")?.port();
    let metrics_task = rtd_metrics::http::serve(metrics_listener, metrics.clone());
    let dashboard = match (&gcs, &opts.dashboard) {
        (Some(gcs), Some(options)) => {
            let jobs = JobsContext {
                logs_dir: session.dir.join("logs"),
                // A head without a port serves this machine only: "auto" finds it.
                cluster_address: if raylet_address.is_empty() { "auto".into() } else { raylet_address.clone() },
                node_id,
                python: opts.python.clone(),
                runtime_resources: session.dir.join("runtime_resources"),
            };
            Some(start_dashboard(options, gcs, &opts.node_ip, metrics, jobs).await?)
        }
        _ => None,
    };
    raylet.prestart_workers();
    NodeFile {
        pid: std::process::id(),
        node_id: node_id.hex(),
        raylet_socket: session.raylet_socket().display().to_string(),
        session_dir: session.dir.display().to_string(),
        node_ip: node_ip.clone().unwrap_or_default(),
        head_address: match &opts.role {
            NodeRole::Worker { head_address } => head_address.clone(),
            NodeRole::Head { .. } => raylet_address.clone(),
        },
        shm_path: session.shm_path().display().to_string(),
        spill_dir: spill_dir.display().to_string(),
        dashboard_url: dashboard.as_ref().map(|(_, _, url)| url.clone()).unwrap_or_default(),
        metrics_export_port,
    }
    .write(&session)?;
    tracing::info!("node {node_id} ready in {}", session.dir.display());

    wait_for_stop(shutdown, opts.watch_stdin).await;

    // Jobs end with their cluster, as in Ray.
    if let Some((_, jobs, _)) = &dashboard {
        jobs.shutdown().await;
    }
    if let Some(gcs) = &gcs {
        gcs.shutdown();
    }
    // Draining: lease requests are answered with spillbacks to other nodes while the
    // workers' kills land (so no worker touches removed files); then the doors close.
    raylet.shutdown();
    for _ in 0..50 {
        if raylet.worker_pids().iter().all(|pid| process_gone(*pid)) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    raylet_task.abort();
    if let Some((task, _, _)) = dashboard {
        task.abort();
    }
    metrics_task.abort();
    if let Some(t) = tcp_task {
        t.abort();
    }
    plasma_task.abort();
    let _ = std::fs::remove_dir_all(&spill_dir);
    session.remove();
    Ok(())
}

async fn wait_for_stop(shutdown: Arc<Notify>, watch_stdin: bool) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).ok();
    let mut int = signal(SignalKind::interrupt()).ok();
    let stdin_closed = async {
        if watch_stdin {
            // Runs on a blocking thread: reading a pipe until EOF.
            let _ = tokio::task::spawn_blocking(|| {
                use std::io::Read;
                let mut buf = [0u8; 64];
                let mut stdin = std::io::stdin();
                while matches!(stdin.read(&mut buf), Ok(n) if n > 0) {}
            })
            .await;
        } else {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        _ = shutdown.notified() => {}
        _ = async { match term.as_mut() { Some(s) => { s.recv().await; } None => std::future::pending().await } } => {}
        _ = async { match int.as_mut() { Some(s) => { s.recv().await; } None => std::future::pending().await } } => {}
        _ = stdin_closed => {}
    }
}

/// Default store size: 30% of memory, bounded by what /dev/shm can hold.
pub fn default_object_store_memory() -> u64 {
    let total = system_memory().unwrap_or(4 << 30);
    let mut size = total * 3 / 10;
    if let Some(shm_free) = free_bytes(Path::new("/dev/shm")) {
        size = size.min(shm_free * 95 / 100);
    }
    size.max(64 << 20)
}

fn system_memory() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

fn free_bytes(path: &Path) -> Option<u64> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).ok()?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid C string and `st` a valid out-pointer.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    Some(st.f_bavail as u64 * st.f_frsize as u64)
}

/// Logical resources of a node: CPU defaults to the machine's cores, memory to the
/// machine's memory minus the object store, as Ray reports them.
pub fn node_resources(
    num_cpus: Option<f64>,
    num_gpus: Option<f64>,
    memory: Option<u64>,
    custom: &HashMap<String, f64>,
    object_store_memory: u64,
) -> Result<ResourceSet, rtd_common::ResourceError> {
    let cpus = num_cpus.unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get() as f64).unwrap_or(1.0));
    let memory = memory.unwrap_or_else(|| system_memory().unwrap_or(0).saturating_sub(object_store_memory)) as f64;
    let mut items: Vec<(&str, f64)> =
        vec![("CPU", cpus), ("memory", memory), ("object_store_memory", object_store_memory as f64)];
    if let Some(g) = num_gpus {
        items.push(("GPU", g));
    }
    for (k, v) in custom {
        items.push((k.as_str(), *v));
    }
    ResourceSet::from_floats(items)
}
