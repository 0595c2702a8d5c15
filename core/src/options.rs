//! How a system is opened ([`SystemOptions`]): read by the façade, the broker it opens and a
//! client that takes its store over.

use crate::clock::Clock;
use crate::manifest::Manifest;
use crate::policy::Policy;
use crate::store::StoreLocation;

/// Everything needed to open a system.
#[derive(Debug, Clone, Default)]
pub struct SystemOptions {
    pub manifest: Option<Manifest>,
    pub store: StoreLocation,
    pub clock: Clock,
    /// Use the simulated source (states and events set by the app) instead of the Linux sources.
    pub simulated: bool,
    /// Where the Linux sources look (ignored with `simulated`).
    pub platform: crate::platform::PlatformOptions,
    pub policy: Policy,
    /// Open without running anything until [`System::start`](crate::System::start): fires (including the catch-up of
    /// missed time at open) latch meanwhile. Lets an app install its handlers first, so runs due
    /// at open find them.
    pub paused: bool,
}
