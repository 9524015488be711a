//! Plugin libraries: private copies ([`store`]), opening and checking them ([`load`]), the loaded
//! library and its objects ([`library`]), what the host lends them ([`services`],
//! [`http_client`]), closing a library once nothing runs in it ([`close`]) and checking that it
//! is gone ([`verify`]), and libraries loaded by a child process instead ([`process`]).

pub mod close;
pub mod http_client;
pub mod library;
pub mod load;
pub mod process;
pub mod services;
pub mod store;
pub mod verify;

pub use library::{Library, PluginActor, PluginSource, PluginTransform};
pub use load::{Loader, PluginLoadError};
pub use verify::UnloadReport;
