//! The event path inside a module: [`dispatch`] (route matching and the transform pipeline),
//! [`deliver`] (attempts, retries with [`retry`] and [`gate`], dead letters), with [`route`],
//! [`interpolate`], [`sop`] and [`log`].

pub mod deliver;
pub mod dispatch;
pub mod gate;
pub mod interpolate;
pub mod log;
pub mod retry;
pub mod route;
pub mod sop;
