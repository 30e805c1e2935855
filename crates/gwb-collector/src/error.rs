/// Why a round or the collector failed.
#[derive(Debug, thiserror::Error)]
pub enum CollectorError {
    #[error(transparent)]
    Graph(#[from] gwb_graph::GraphError),
    #[error("publishing events failed: {0}")]
    Bus(#[from] gwb_bus::BusError),
    #[error("cursor store: {0}")]
    Cursor(#[from] rusqlite::Error),
    #[error(
        "{resource} delta round {round_id} is looping (page {page}: link seen before or collector.max_pages_per_round reached); abandoning it"
    )]
    Loop { resource: &'static str, round_id: String, page: u64 },
    #[error("Graph asked for a resync again during a full round: {0}")]
    ResyncLoop(String),
    #[error(
        "{resource} delta page {page} took longer than collector.page_timeout_seconds ({seconds} s); the round resumes at that page"
    )]
    PageStalled { resource: &'static str, page: u64, seconds: u64 },
    #[error("{0}")]
    Config(String),
    #[error("{context}: {source}")]
    Io { context: String, source: std::io::Error },
    #[error("control API: {0}")]
    Control(String),
    #[error(transparent)]
    Listen(#[from] gwb_runtime::listen::ListenError),
}
