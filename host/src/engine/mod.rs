//! The event path inside a module: [`dispatch`] (route matching and the transform pipeline),
//! [`deliver`] (actor hand-off), with [`route`], [`interpolate`], [`sop`] and [`log`].

pub mod deliver;
pub mod dispatch;
pub mod interpolate;
pub mod log;
pub mod route;
pub mod sop;
