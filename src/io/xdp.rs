//! The XDP steering program (`ffi/xdp/steer.c`): loading, attaching and
//! its maps.
//!
//! We load our own program instead of libxdp's default, whose dispatcher
//! does not load on every kernel and which leaves no room for our
//! filtering. It is attached through a BPF link, so the kernel detaches it
//! when the last descriptor goes, even after SIGKILL.

use super::chain;
use crate::config::XdpMode;
use aya::Ebpf;
use aya::maps::{Array, HashMap, MapData, XskMap};
use aya::programs::{Xdp, XdpFlags};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::fd::RawFd;

/// The program's name in the kernel: how a leftover is recognised as ours.
pub const PROGRAM_NAME: &str = "rr_steer";

/// The most queues and local addresses the program's maps hold
/// (`MAX_QUEUES`, `MAX_ADDRS` in steer.c).
pub const MAX_QUEUES: u32 = 256;
pub const MAX_ADDRS: usize = 256;

// The ELF parser wants the object 8-byte aligned.
#[repr(C, align(8))]
struct Aligned<T: ?Sized>(T);
static OBJECT: &Aligned<[u8]> = &Aligned(*include_bytes!(concat!(env!("OUT_DIR"), "/steer.o")));
static BENCH_OBJECT: &Aligned<[u8]> =
    &Aligned(*include_bytes!(concat!(env!("OUT_DIR"), "/bench.o")));

/// The throughput run's XDP programs (`ffi/xdp/bench.c`), as an ELF object.
pub fn bench_object() -> &'static [u8] {
    &BENCH_OBJECT.0
}

/// Why steering could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot load the XDP program: {0}")]
    Load(String),
    #[error("cannot attach the XDP program to {device} in {mode} mode: {message}")]
    Attach {
        device: String,
        mode: &'static str,
        message: String,
    },
    #[error("cannot fill the XDP program's {map} map: {message}")]
    Map { map: &'static str, message: String },
    #[error("{0} local addresses of one family; the XDP program holds at most {MAX_ADDRS}")]
    TooManyAddresses(usize),
}

/// The mode the program runs in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Native,
    Generic,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Native => "native",
            Mode::Generic => "generic",
        }
    }

    fn flags(self) -> XdpFlags {
        match self {
            Mode::Native => XdpFlags::DRV_MODE,
            Mode::Generic => XdpFlags::SKB_MODE,
        }
    }
}

/// The attached program. Dropping it detaches the program.
pub struct Steering {
    ebpf: Ebpf,
    mode: Mode,
}

impl Steering {
    /// Loads the program, fills its maps and attaches it to `device`.
    /// In `Auto` mode a device without native XDP gets generic mode, and
    /// one line is logged saying so.
    pub fn attach(
        device: &str,
        index: u32,
        mode: XdpMode,
        vlan: Option<u16>,
        v4: &[Ipv4Addr],
        v6: &[Ipv6Addr],
    ) -> Result<Steering, Error> {
        if v4.len() > MAX_ADDRS || v6.len() > MAX_ADDRS {
            return Err(Error::TooManyAddresses(v4.len().max(v6.len())));
        }
        let mut ebpf = Ebpf::load(&OBJECT.0).map_err(|e| Error::Load(chain(&e)))?;
        let map_err = |map| {
            move |e: aya::maps::MapError| Error::Map {
                map,
                message: chain(&e),
            }
        };
        {
            let mut conf: Array<&mut MapData, u32> = ebpf
                .map_mut("rr_conf")
                .ok_or_else(|| Error::Load("no rr_conf map in the object".to_string()))?
                .try_into()
                .map_err(map_err("rr_conf"))?;
            conf.set(0, u32::from(vlan.unwrap_or(0)), 0)
                .map_err(map_err("rr_conf"))?;
        }
        {
            let mut local4: HashMap<&mut MapData, u32, u8> = ebpf
                .map_mut("rr_local4")
                .ok_or_else(|| Error::Load("no rr_local4 map in the object".to_string()))?
                .try_into()
                .map_err(map_err("rr_local4"))?;
            for a in v4 {
                // Keyed by the address bytes as they sit in the header.
                local4
                    .insert(u32::from_ne_bytes(a.octets()), 1, 0)
                    .map_err(map_err("rr_local4"))?;
            }
        }
        {
            let mut local6: HashMap<&mut MapData, [u8; 16], u8> = ebpf
                .map_mut("rr_local6")
                .ok_or_else(|| Error::Load("no rr_local6 map in the object".to_string()))?
                .try_into()
                .map_err(map_err("rr_local6"))?;
            for a in v6 {
                local6
                    .insert(a.octets(), 1, 0)
                    .map_err(map_err("rr_local6"))?;
            }
        }
        let program: &mut Xdp = ebpf
            .program_mut(PROGRAM_NAME)
            .ok_or_else(|| Error::Load(format!("no {PROGRAM_NAME} program in the object")))?
            .try_into()
            .map_err(|e| Error::Load(chain(&e)))?;
        program.load().map_err(|e| Error::Load(chain(&e)))?;
        let attach = |program: &mut Xdp, mode: Mode| {
            program
                .attach_to_if_index(index, mode.flags())
                .map(|_| mode)
                .map_err(|e| Error::Attach {
                    device: device.to_string(),
                    mode: mode.name(),
                    message: chain(&e),
                })
        };
        let mode = match mode {
            XdpMode::Native => attach(program, Mode::Native)?,
            XdpMode::Generic => attach(program, Mode::Generic)?,
            XdpMode::Auto => match attach(program, Mode::Native) {
                Ok(mode) => mode,
                Err(e) => {
                    log::info!("{e}; falling back to generic mode");
                    attach(program, Mode::Generic)?
                }
            },
        };
        Ok(Steering { ebpf, mode })
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Steers `queue`'s frames to the AF_XDP socket `fd`.
    pub fn register(&mut self, queue: u32, fd: RawFd) -> Result<(), Error> {
        let map_err = |e: aya::maps::MapError| Error::Map {
            map: "rr_xsks",
            message: chain(&e),
        };
        let mut xsks: XskMap<&mut MapData> = self
            .ebpf
            .map_mut("rr_xsks")
            .ok_or_else(|| Error::Load("no rr_xsks map in the object".to_string()))?
            .try_into()
            .map_err(map_err)?;
        xsks.set(queue, fd, 0).map_err(map_err)
    }
}

/// The name of the loaded BPF program with this id, if it still exists.
pub fn program_name(id: u32) -> Option<String> {
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .find(|p| p.id() == id)
        .and_then(|p| p.name_as_str().map(str::to_string))
}
