//! LIO (the kernel's SCSI target) in a throw-away qemu guest: the parts
//! (Debian's kernel package, its modules, busybox), the initramfs, the boot
//! with a hard timeout, and the guest's console split into what it reports.
//!
//! The host's kernel may lack kprobes and loadable modules; the guest runs
//! Debian's stock kernel, so LIO, device-mapper and kprobes are all there.
//! The guest's userland is busybox plus host binaries copied with the
//! libraries `ldd` names (the host is the same distribution as the guest's
//! kernel). Nothing here needs tgt-trace: xtask uses it before the eBPF
//! toolchain is installed.

use std::{
    collections::{BTreeMap, HashMap},
    fmt,
    io::{BufRead as _, BufReader, Write as _},
    os::unix::{fs::PermissionsExt as _, process::CommandExt as _},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

/// Debian packages the guest is made of (its kernel is downloaded, not
/// installed): qemu, busybox for the guest's userland and for `cpio`,
/// dmsetup for the holdable backing store.
pub const HOST_PACKAGES: &[&str] = &["qemu-system-x86", "busybox-static", "dmsetup"];

/// The metapackage whose dependency names the current kernel package.
const KERNEL_METAPACKAGE: &str = "linux-image-amd64";

/// Modules the guest loads, in this order after their dependencies:
/// crc32c_generic first (the iSCSI login's digest setup allocates crc32c
/// whether or not digests are used: without it login fails in
/// crypto_alloc_ahash), crct10dif_generic before crc-t10dif (which asks the
/// crypto API for crct10dif at init), then LIO with its iSCSI fabric and its
/// file and block backstores, and loop plus device-mapper for the holdable
/// LUN.
pub const GUEST_MODULES: &[&str] = &[
    "crc32c_generic",
    "crct10dif_generic",
    "configfs",
    "target_core_mod",
    "iscsi_target_mod",
    "target_core_file",
    "target_core_iblock",
    "loop",
    "dm_mod",
];

/// The target the guest's /init configures.
pub const TARGET_IQN: &str = "iqn.2026-11.lio:t1";
/// Marks the guest's report lines on its console.
pub const MARK: &str = "@@tgt-trace-vm";

#[derive(Debug)]
pub struct Error(pub String);

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

pub type Result<T> = std::result::Result<T, Error>;

fn err(what: impl Into<String>) -> Error {
    Error(what.into())
}

fn io_err(what: impl fmt::Display) -> impl FnOnce(std::io::Error) -> Error {
    move |e| Error(format!("{what}: {e}"))
}

fn run(what: &str, cmd: &mut Command) -> Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(io_err(format!("cannot run {cmd:?}")))?;
    if !out.status.success() {
        return Err(err(format!(
            "{what} failed ({}): {cmd:?}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Debian's kernel, extracted (not installed) into the cache.
#[derive(Debug, Clone)]
pub struct Kernel {
    /// E.g. linux-image-6.1.0-57-amd64.
    pub package: String,
    /// E.g. 6.1.0-57-amd64.
    pub release: String,
    pub vmlinuz: PathBuf,
    /// lib/modules/<release> of the extracted package.
    pub modules: PathBuf,
}

/// The kernel package `linux-image-amd64` depends on, downloaded with
/// `apt-get download` and extracted with `dpkg-deb -x` into `cache`, once:
/// a later call finds it there (and uses the newest cached one when apt
/// cannot be asked).
pub fn kernel(cache: &Path) -> Result<Kernel> {
    std::fs::create_dir_all(cache).map_err(io_err(format!("creating {}", cache.display())))?;
    let package = match current_kernel_package() {
        Ok(package) => package,
        Err(apt) => cached_kernel_packages(cache).pop().ok_or_else(|| {
            err(format!(
                "{apt}; and no kernel is cached in {}",
                cache.display()
            ))
        })?,
    };
    let dir = cache.join(&package);
    let complete = dir.join(".extracted");
    if !complete.exists() {
        download_and_extract(cache, &package, &dir)?;
        std::fs::write(&complete, b"")
            .map_err(io_err(format!("writing {}", complete.display())))?;
    }
    let lib_modules = dir.join("lib/modules");
    let release = std::fs::read_dir(&lib_modules)
        .map_err(io_err(format!("reading {}", lib_modules.display())))?
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .next()
        .ok_or_else(|| err(format!("{} holds no kernel release", lib_modules.display())))?;
    let vmlinuz = dir.join("boot").join(format!("vmlinuz-{release}"));
    if !vmlinuz.exists() {
        return Err(err(format!(
            "{} is missing: remove {} to download it again",
            vmlinuz.display(),
            dir.display()
        )));
    }
    Ok(Kernel {
        package,
        modules: lib_modules.join(&release),
        release,
        vmlinuz,
    })
}

fn current_kernel_package() -> Result<String> {
    let out = run(
        "apt-cache depends",
        Command::new("apt-cache").args(["depends", KERNEL_METAPACKAGE]),
    )
    .map_err(|e| {
        err(format!(
            "{e} (is this Debian with apt's lists? run `apt-get update`)"
        ))
    })?;
    out.lines()
        .filter_map(|l| l.trim().strip_prefix("Depends: "))
        .find(|p| p.starts_with("linux-image-"))
        .map(str::to_owned)
        .ok_or_else(|| {
            err(format!(
                "`apt-cache depends {KERNEL_METAPACKAGE}` names no linux-image-* package"
            ))
        })
}

fn cached_kernel_packages(cache: &Path) -> Vec<String> {
    let mut found: Vec<String> = std::fs::read_dir(cache)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join(".extracted").exists())
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    found.sort();
    found
}

fn download_and_extract(cache: &Path, package: &str, dir: &Path) -> Result<()> {
    let download = cache.join("download");
    let _ = std::fs::remove_dir_all(&download);
    std::fs::create_dir_all(&download)
        .map_err(io_err(format!("creating {}", download.display())))?;
    // apt's sandbox user cannot write into a root-owned cache; it then
    // downloads as root, which is what is wanted here anyway.
    run(
        &format!("apt-get download {package}"),
        Command::new("apt-get")
            .args(["download", "-q", package])
            .current_dir(&download),
    )
    .map_err(|e| err(format!("{e} (needs network access to the Debian mirror; `apt-get update` first if the package is unknown)")))?;
    let deb = std::fs::read_dir(&download)
        .map_err(io_err(format!("reading {}", download.display())))?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .ok_or_else(|| err(format!("apt-get download {package} left no .deb")))?;
    let partial = cache.join(format!("{package}.partial"));
    let _ = std::fs::remove_dir_all(&partial);
    run(
        "dpkg-deb -x",
        Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&partial),
    )?;
    let _ = std::fs::remove_dir_all(dir);
    std::fs::rename(&partial, dir).map_err(io_err(format!("renaming {}", partial.display())))?;
    let _ = std::fs::remove_dir_all(&download);
    Ok(())
}

/// A module's name as the kernel spells it: dashes become underscores.
fn module_name(name: &str) -> String {
    name.replace('-', "_")
}

/// The `depends=` of a module's .modinfo section.
fn module_depends(path: &Path) -> Result<Vec<String>> {
    use object::{Object as _, ObjectSection as _};
    let bytes = std::fs::read(path).map_err(io_err(format!("reading {}", path.display())))?;
    let file = object::File::parse(&*bytes)
        .map_err(|e| err(format!("{} is not an ELF module: {e}", path.display())))?;
    let section = file
        .section_by_name(".modinfo")
        .ok_or_else(|| err(format!("{} has no .modinfo", path.display())))?;
    let data = section
        .data()
        .map_err(|e| err(format!("{}: .modinfo: {e}", path.display())))?;
    Ok(data
        .split(|&b| b == 0)
        .filter_map(|field| field.strip_prefix(b"depends="))
        .flat_map(|list| {
            String::from_utf8_lossy(list)
                .split(',')
                .map(module_name)
                .collect::<Vec<_>>()
        })
        .filter(|name| !name.is_empty())
        .collect())
}

/// The module files to load for `wanted`, each after what it depends on
/// (read from the modules themselves: the extracted package has no
/// modules.dep, which depmod would write at install time).
pub fn resolve_modules(modules: &Path, wanted: &[&str]) -> Result<Vec<PathBuf>> {
    let mut index: HashMap<String, PathBuf> = HashMap::new();
    let mut stack = vec![modules.join("kernel")];
    while let Some(dir) = stack.pop() {
        for entry in
            std::fs::read_dir(&dir).map_err(io_err(format!("reading {}", dir.display())))?
        {
            let path = entry
                .map_err(io_err(format!("reading {}", dir.display())))?
                .path();
            if path.is_dir() {
                stack.push(path);
            } else if let Some(stem) = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".ko"))
            {
                index.insert(module_name(stem), path);
            }
        }
    }
    let mut order = Vec::new();
    let mut seen = std::collections::HashSet::new();
    fn visit(
        name: &str,
        index: &HashMap<String, PathBuf>,
        seen: &mut std::collections::HashSet<String>,
        order: &mut Vec<PathBuf>,
        depth: usize,
    ) -> Result<()> {
        if seen.contains(name) {
            return Ok(());
        }
        if depth > 64 {
            return Err(err(format!("module dependencies loop through {name}")));
        }
        let path = index.get(name).ok_or_else(|| {
            err(format!(
                "module {name} is not in the kernel package (built in, or renamed?)"
            ))
        })?;
        for dep in module_depends(path)? {
            visit(&dep, index, seen, order, depth + 1)?;
        }
        seen.insert(name.to_owned());
        order.push(path.clone());
        Ok(())
    }
    for name in wanted {
        visit(&module_name(name), &index, &mut seen, &mut order, 0)?;
    }
    Ok(order)
}

/// A directory that becomes the guest's root file system.
pub struct Initramfs {
    pub root: PathBuf,
}

impl Initramfs {
    /// A fresh tree at `root` (removed first) with busybox as /bin/busybox.
    pub fn new(root: &Path) -> Result<Initramfs> {
        let _ = std::fs::remove_dir_all(root);
        for dir in [
            "bin",
            "sbin",
            "etc",
            "proc",
            "sys",
            "dev",
            "tmp",
            "run",
            "lib/modules",
        ] {
            let path = root.join(dir);
            std::fs::create_dir_all(&path)
                .map_err(io_err(format!("creating {}", path.display())))?;
        }
        let tree = Initramfs {
            root: root.to_owned(),
        };
        let busybox = which("busybox").ok_or_else(|| {
            err("busybox not found: `apt-get install busybox-static` (or `cargo xtask vm`, which installs it)")
        })?;
        tree.copy(&busybox, "bin/busybox", 0o755)?;
        Ok(tree)
    }

    fn copy(&self, from: &Path, to: &str, mode: u32) -> Result<()> {
        let dest = self.root.join(to.trim_start_matches('/'));
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent)
                .map_err(io_err(format!("creating {}", parent.display())))?;
        }
        std::fs::copy(from, &dest).map_err(io_err(format!(
            "copying {} to {}",
            from.display(),
            dest.display()
        )))?;
        std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(mode))
            .map_err(io_err(format!("chmod {}", dest.display())))
    }

    /// A file with these contents at `guest` (an absolute path in the guest).
    pub fn add_file(&self, guest: &str, contents: &[u8], mode: u32) -> Result<()> {
        let dest = self.root.join(guest.trim_start_matches('/'));
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent)
                .map_err(io_err(format!("creating {}", parent.display())))?;
        }
        std::fs::write(&dest, contents).map_err(io_err(format!("writing {}", dest.display())))?;
        std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(mode))
            .map_err(io_err(format!("chmod {}", dest.display())))
    }

    /// A host executable at `guest`, with the shared libraries `ldd` says
    /// it loads, at the same paths.
    pub fn add_binary(&self, host: &Path, guest: &str) -> Result<()> {
        if !host.exists() {
            return Err(err(format!(
                "{} does not exist (not built yet?)",
                host.display()
            )));
        }
        self.copy(host, guest, 0o755)?;
        let listing = Command::new("ldd")
            .arg(host)
            .stdin(Stdio::null())
            .output()
            .map_err(io_err("cannot run ldd (package libc-bin)"))?;
        // ldd fails on a static binary: nothing to copy then.
        for line in String::from_utf8_lossy(&listing.stdout).lines() {
            let path = match line.split_once("=>") {
                Some((_, to)) => to.trim().split(' ').next().unwrap_or(""),
                None => line.trim().split(' ').next().unwrap_or(""),
            };
            if path.starts_with('/') {
                let real =
                    std::fs::canonicalize(path).map_err(io_err(format!("resolving {path}")))?;
                self.copy(&real, path, 0o755)?;
            }
        }
        Ok(())
    }

    /// Copies the modules to /lib/modules and lists them, in load order, in
    /// /etc/modules.order (read by the /init scripts here).
    pub fn add_modules(&self, modules: &[PathBuf]) -> Result<()> {
        let mut order = String::new();
        for module in modules {
            let name = module
                .file_name()
                .and_then(|n| n.to_str())
                .ok_or_else(|| err(format!("odd module path {}", module.display())))?;
            self.copy(module, &format!("lib/modules/{name}"), 0o644)?;
            order.push_str(name);
            order.push('\n');
        }
        self.add_file("/etc/modules.order", order.as_bytes(), 0o644)
    }

    /// Packs the tree as a gzip'd newc cpio archive (what the kernel
    /// unpacks as its initramfs).
    pub fn pack(&self, out: &Path) -> Result<()> {
        let busybox = self.root.join("bin/busybox");
        run(
            "packing the initramfs",
            Command::new("sh")
                .args([
                    "-c",
                    "find . | \"$0\" cpio -o -H newc 2>/dev/null | gzip -1 > \"$1\"",
                ])
                .arg(&busybox)
                .arg(out)
                .current_dir(&self.root),
        )?;
        Ok(())
    }
}

/// The first `name` on PATH.
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into());
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// What the guest runs.
#[derive(Debug, Clone)]
pub struct GuestPlan {
    /// The scenarios program (tgt-trace-e2e's lio-scenarios).
    pub scenarios: PathBuf,
    /// tgt-trace; `None`: the scenarios run untraced.
    pub tgt_trace: Option<PathBuf>,
    /// Else the scenarios once: a load and the scenarios in a loop for
    /// this long, shown by the TUI or recorded and reported.
    pub demo: Option<Demo>,
}

#[derive(Debug, Clone)]
pub struct Demo {
    pub duration: Duration,
    /// The host terminal's size: the guest's console runs the TUI then.
    pub terminal: Option<(u16, u16)>,
}

/// Everything the guest needs, under `work` (its initramfs tree, the
/// archive). Returns the archive and the kernel command line.
pub fn build_guest(kernel: &Kernel, plan: &GuestPlan, work: &Path) -> Result<(PathBuf, String)> {
    let tree = Initramfs::new(&work.join("root"))?;
    tree.add_modules(&resolve_modules(&kernel.modules, GUEST_MODULES)?)?;
    let dmsetup =
        which("dmsetup").ok_or_else(|| err("dmsetup not found: `apt-get install dmsetup`"))?;
    tree.add_binary(&dmsetup, "/sbin/dmsetup")?;
    tree.add_binary(&plan.scenarios, "/bin/lio-scenarios")?;
    if let Some(tgt_trace) = &plan.tgt_trace {
        tree.add_binary(tgt_trace, "/bin/tgt-trace")?;
    }
    tree.add_file("/init", init_script(plan).as_bytes(), 0o755)?;
    tree.add_file(
        "/bin/run-scenarios",
        b"#!/bin/sh\n# Keeps the scenarios' output apart from tgt-trace's.\n\
          /bin/lio-scenarios \"$@\" >/tmp/scenarios.ndjson 2>/tmp/scenarios.stderr\n\
          rc=$?\necho $rc >/tmp/scenarios.rc\nexit $rc\n",
        0o755,
    )?;
    let archive = work.join("initrd.gz");
    tree.pack(&archive)?;
    let mut append = String::from("console=ttyS0 quiet loglevel=1 panic=-1");
    if let Some((rows, cols)) = plan.demo.as_ref().and_then(|d| d.terminal) {
        append.push_str(&format!(
            " tgt_trace_vm.rows={rows} tgt_trace_vm.cols={cols}"
        ));
    }
    Ok((archive, append))
}

/// The guest's /init: mounts, modules, LIO with two LUNs, the run, the
/// report between marker lines, power off. Everything printed is bounded.
fn init_script(plan: &GuestPlan) -> String {
    let mut script = String::from(INIT_SETUP);
    match &plan.demo {
        None => script.push_str(INIT_SCENARIOS),
        Some(demo) => {
            script.push_str(&format!("DURATION={}\n", demo.duration.as_secs().max(1)));
            script.push_str(INIT_DEMO);
        }
    }
    script
}

const INIT_SETUP: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin:/sbin HOME=/tmp
mark() { echo "@@tgt-trace-vm $*"; }
die() {
    mark "error $*"
    mark dmesg-begin; dmesg | tail -n 60; mark dmesg-end
    mark done
    poweroff -f
}
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /tmp
mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null
mount -t debugfs debugfs /sys/kernel/debug
# Kernel messages (LIO logs every TMF) would interleave with the report.
echo 1 > /proc/sys/kernel/printk
ip link set lo up || die "lo does not come up"
# eBPF maps count against RLIMIT_MEMLOCK on older kernels.
ulimit -l unlimited
for m in $(cat /etc/modules.order); do
    insmod /lib/modules/$m || die "insmod $m"
done
mount -t configfs configfs /sys/kernel/config || die "mounting configfs"

# The holdable LUN: tmpfs file -> loop -> device-mapper linear "slow".
# `dmsetup suspend slow` waits for the I/O in flight, then queues new bios
# until `dmsetup resume slow`: a command is held in LIO's backend for as
# long as the scenario wants, without timing.
dd if=/dev/zero of=/tmp/slow.img bs=1M count=16 2>/dev/null || die "creating the slow disk"
losetup /dev/loop0 /tmp/slow.img || die "losetup"
dmsetup --noudevsync create slow --table "0 32768 linear /dev/loop0 0" || die "dmsetup create"
SLOW=/dev/mapper/slow
[ -b $SLOW ] || SLOW=/dev/dm-0
[ -b $SLOW ] || die "no block device for dm slow"

C=/sys/kernel/config/target
mkdir -p $C/core/fileio_0/disk0 || die "LIO core (target_core_mod loaded?)"
echo "fd_dev_name=/tmp/disk0.img,fd_dev_size=67108864" > $C/core/fileio_0/disk0/control
echo 1 > $C/core/fileio_0/disk0/enable || die "enabling fileio disk0"
mkdir -p $C/core/iblock_0/slow
echo "udev_path=$SLOW" > $C/core/iblock_0/slow/control
echo 1 > $C/core/iblock_0/slow/enable || die "enabling iblock slow"
T=$C/iscsi/iqn.2026-11.lio:t1/tpgt_1
mkdir -p $T/lun/lun_0 $T/lun/lun_1 || die "LIO iSCSI target"
ln -s $C/core/fileio_0/disk0 $T/lun/lun_0/disk0
ln -s $C/core/iblock_0/slow $T/lun/lun_1/slow
mkdir $T/np/127.0.0.1:3260 || die "LIO portal 127.0.0.1:3260"
echo 1 > $T/attrib/generate_node_acls; echo 0 > $T/attrib/authentication
echo 0 > $T/attrib/demo_mode_write_protect; echo 1 > $T/attrib/cache_dynamic_acls
echo 1 > $T/enable || die "enabling the TPG"
mark "ready kernel $(uname -r)"

# Prints a file between markers, at most $2 bytes of it.
section() {
    mark "$1-begin"
    [ -f "$3" ] && head -c "$2" "$3"
    [ -f "$3" ] && [ -n "$(tail -c 1 "$3")" ] && echo
    mark "$1-end"
}
"#;

const INIT_SCENARIOS: &str = r#"
traced=no
if [ -x /bin/tgt-trace ]; then
    tgt-trace record --target lio --matched -o /tmp/trace.ndjson -- /bin/run-scenarios \
        >/tmp/tracer.stdout 2>/tmp/tracer.stderr
    tracer=$?
    mark "status tracer $tracer"
    if [ -s /tmp/trace.ndjson ]; then
        traced=yes
    else
        mark "trace unavailable (tgt-trace exited $tracer with no trace header)"
    fi
else
    mark "trace unavailable (no tgt-trace in the guest)"
fi
if [ $traced = no ]; then
    rm -f /tmp/scenarios.rc
    /bin/run-scenarios
fi
scenarios=$(cat /tmp/scenarios.rc 2>/dev/null || echo none)
mark "status scenarios $scenarios"
section scenarios 1000000 /tmp/scenarios.ndjson
section scenarios-stderr 100000 /tmp/scenarios.stderr
[ $traced = yes ] && section trace 4000000 /tmp/trace.ndjson
section tracer-stderr 100000 /tmp/tracer.stderr
if [ "$scenarios" != 0 ] || { [ $traced = yes ] && [ "$tracer" != 0 ]; }; then
    mark dmesg-begin; dmesg | grep -iE 'target|iscsi|tmr|abort|reset|lun' | tail -n 200; mark dmesg-end
fi
mark done
poweroff -f
"#;

const INIT_DEMO: &str = r#"
rows=$(sed -n 's/.*tgt_trace_vm.rows=\([0-9]*\).*/\1/p' /proc/cmdline)
cols=$(sed -n 's/.*tgt_trace_vm.cols=\([0-9]*\).*/\1/p' /proc/cmdline)
[ -x /bin/tgt-trace ] || die "no tgt-trace in the guest"
# The load and the scenarios loop until the tracer is done.
/bin/lio-scenarios --demo $((DURATION + 5)) >/tmp/scenarios.ndjson 2>/tmp/scenarios.stderr &
load=$!
if [ -n "$rows" ]; then
    export TERM=linux
    stty rows $rows cols $cols
    timeout -s INT $DURATION tgt-trace tui --target lio </dev/console >/dev/console 2>/tmp/tracer.stderr
    tracer=$?
    clear
else
    timeout -s INT $DURATION tgt-trace record --target lio --matched -o /tmp/trace.ndjson \
        >/tmp/tracer.stdout 2>/tmp/tracer.stderr
    tracer=$?
fi
kill $load 2>/dev/null; wait $load 2>/dev/null
mark "status tracer $tracer"
if [ -z "$rows" ] && [ -s /tmp/trace.ndjson ]; then
    tgt-trace report /tmp/trace.ndjson > /tmp/report.txt 2>&1
    mark "status report $?"
    section report 200000 /tmp/report.txt
fi
section tracer-stderr 100000 /tmp/tracer.stderr
section scenarios-stderr 20000 /tmp/scenarios.stderr
mark "scenarios-runs $(wc -l < /tmp/scenarios.ndjson)"
mark done
poweroff -f
"#;

/// How to boot.
#[derive(Debug, Clone)]
pub struct Boot {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub append: String,
    pub memory_mb: u32,
    /// qemu is killed after this long, whatever the guest is doing.
    pub timeout: Duration,
    /// The console is the caller's terminal (the demo's TUI) instead of
    /// being read here.
    pub interactive: bool,
}

impl Boot {
    pub fn command(&self) -> Command {
        let mut cmd = Command::new("qemu-system-x86_64");
        cmd.args(["-accel", "tcg", "-smp", "1"])
            .args(["-m", &self.memory_mb.to_string()])
            .arg("-kernel")
            .arg(&self.kernel)
            .arg("-initrd")
            .arg(&self.initrd)
            .args(["-append", &self.append])
            .args(["-nographic", "-no-reboot", "-nic", "none"]);
        cmd
    }
}

/// A running qemu, in a process group of its own unless interactive;
/// killed (its whole group) when dropped.
pub struct Qemu {
    child: Child,
    own_group: bool,
    lines: Option<mpsc::Receiver<String>>,
    deadline: Instant,
    timeout: Duration,
}

impl Qemu {
    pub fn start(boot: &Boot) -> Result<Qemu> {
        if which("qemu-system-x86_64").is_none() {
            return Err(err(
                "qemu-system-x86_64 not found: `apt-get install qemu-system-x86` (or run `cargo xtask vm`)",
            ));
        }
        let mut cmd = boot.command();
        if boot.interactive {
            // The TUI reads the terminal: qemu must be in the foreground
            // process group, the caller's.
            cmd.stdin(Stdio::inherit()).stdout(Stdio::inherit());
        } else {
            cmd.stdin(Stdio::null())
                .stdout(Stdio::piped())
                .process_group(0);
        }
        cmd.stderr(Stdio::inherit());
        let mut child = cmd.spawn().map_err(io_err(format!("starting {cmd:?}")))?;
        let lines = match child.stdout.take() {
            Some(stdout) => {
                let (send, receive) = mpsc::channel();
                std::thread::spawn(move || {
                    let mut reader = BufReader::new(stdout);
                    let mut line = Vec::new();
                    while reader.read_until(b'\n', &mut line).is_ok_and(|n| n > 0) {
                        let text = String::from_utf8_lossy(&line);
                        let text = text.trim_end_matches(['\n', '\r']).replace('\r', "");
                        if send.send(text).is_err() {
                            break;
                        }
                        line.clear();
                    }
                });
                Some(receive)
            }
            None => None,
        };
        Ok(Qemu {
            child,
            own_group: !boot.interactive,
            lines,
            deadline: Instant::now() + boot.timeout,
            timeout: boot.timeout,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Reads the console until the guest powers off (or the timeout, or
    /// `stop` says so: polled a few times a second), each line passed to
    /// `each` as it comes. Errors if qemu is killed or fails.
    pub fn console(
        &mut self,
        mut each: impl FnMut(&str),
        stop: &dyn Fn() -> bool,
    ) -> Result<String> {
        let mut console = String::new();
        if let Some(lines) = self.lines.take() {
            loop {
                if stop() {
                    self.kill();
                    return Err(err("stopped: qemu killed"));
                }
                let left = self.deadline.saturating_duration_since(Instant::now());
                match lines.recv_timeout(left.min(Duration::from_millis(200))) {
                    Ok(line) => {
                        each(&line);
                        console.push_str(&line);
                        console.push('\n');
                    }
                    Err(mpsc::RecvTimeoutError::Disconnected) => break,
                    Err(mpsc::RecvTimeoutError::Timeout) if Instant::now() < self.deadline => {}
                    Err(mpsc::RecvTimeoutError::Timeout) => {
                        self.kill();
                        return Err(err(format!(
                            "the guest did not power off within {:?}; killed qemu. Console so far:\n{}",
                            self.timeout,
                            tail(&console, 40)
                        )));
                    }
                }
            }
        }
        let status = loop {
            if let Some(status) = self.child.try_wait().map_err(io_err("waiting for qemu"))? {
                break status;
            }
            if Instant::now() >= self.deadline {
                self.kill();
                return Err(err(format!(
                    "qemu did not exit within {:?}; killed it",
                    self.timeout
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        if !status.success() {
            return Err(err(format!(
                "qemu failed ({status}). Console:\n{}",
                tail(&console, 40)
            )));
        }
        Ok(console)
    }

    fn kill(&mut self) {
        match i32::try_from(self.child.id()) {
            Ok(pgid) if self.own_group => {
                // SAFETY: kill(2) on the process group this child leads.
                unsafe { libc::kill(-pgid, libc::SIGKILL) };
            }
            _ => {
                let _ = self.child.kill();
            }
        }
        let _ = self.child.wait();
    }
}

impl Drop for Qemu {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.kill();
        }
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// What the guest reported on its console.
#[derive(Debug, Clone, Default)]
pub struct GuestRun {
    /// One JSON object per scenario, as lio-scenarios printed them.
    pub scenarios: Vec<serde_json::Value>,
    /// The NDJSON trace tgt-trace recorded; `None` when it was unavailable.
    pub trace: Option<String>,
    /// Why there is no trace, as the guest said.
    pub trace_unavailable: Option<String>,
    pub tracer_stderr: String,
    pub scenarios_stderr: String,
    /// `status NAME CODE` lines: tracer, scenarios, report.
    pub statuses: BTreeMap<String, String>,
    /// Sections other than the above (dmesg, report).
    pub sections: BTreeMap<String, String>,
    /// `error ...`: what stopped the guest's set-up.
    pub error: Option<String>,
    /// The guest ran to its end.
    pub done: bool,
    pub kernel_release: Option<String>,
    pub console: String,
}

impl GuestRun {
    /// Splits a console at the marker lines.
    pub fn parse(console: &str) -> Result<GuestRun> {
        let mut run = GuestRun {
            console: console.to_owned(),
            ..GuestRun::default()
        };
        let mut open: Option<(String, String)> = None;
        for line in console.lines() {
            // Console output can start mid-line after kernel messages.
            let Some(rest) = line.find(MARK).map(|at| line[at + MARK.len()..].trim()) else {
                if let Some((_, body)) = open.as_mut() {
                    body.push_str(line);
                    body.push('\n');
                }
                continue;
            };
            if let Some(name) = rest.strip_suffix("-begin") {
                open = Some((name.to_owned(), String::new()));
            } else if let Some(name) = rest.strip_suffix("-end") {
                if let Some((open_name, body)) = open.take()
                    && open_name == name
                {
                    run.sections.insert(open_name, body);
                }
            } else if let Some(status) = rest.strip_prefix("status ") {
                let (name, code) = status.split_once(' ').unwrap_or((status, ""));
                run.statuses.insert(name.to_owned(), code.to_owned());
            } else if let Some(why) = rest.strip_prefix("trace unavailable") {
                run.trace_unavailable = Some(why.trim().to_owned());
            } else if let Some(what) = rest.strip_prefix("error ") {
                run.error = Some(what.to_owned());
            } else if let Some(release) = rest.strip_prefix("ready kernel ") {
                run.kernel_release = Some(release.to_owned());
            } else if rest == "done" {
                run.done = true;
            }
        }
        if let Some(text) = run.sections.remove("scenarios") {
            for line in text.lines().filter(|l| !l.trim().is_empty()) {
                let value = serde_json::from_str(line)
                    .map_err(|e| err(format!("a scenario line is not JSON ({e}): {line}")))?;
                run.scenarios.push(value);
            }
        }
        run.trace = run.sections.remove("trace");
        run.tracer_stderr = run.sections.remove("tracer-stderr").unwrap_or_default();
        run.scenarios_stderr = run.sections.remove("scenarios-stderr").unwrap_or_default();
        Ok(run)
    }

    /// The scenario named `name`.
    pub fn scenario(&self, name: &str) -> Option<&serde_json::Value> {
        self.scenarios.iter().find(|s| s["scenario"] == name)
    }
}

/// Where the parts are kept between runs and where a run works.
#[derive(Debug, Clone)]
pub struct Dirs {
    /// Kernel packages (target/vm/cache).
    pub cache: PathBuf,
    /// This run's initramfs and archive.
    pub work: PathBuf,
}

/// Kernel, guest, boot, console: one whole run. `started` is told qemu's
/// pid (to register it for signals), `each` every console line, and `stop`
/// is asked whether to end early.
pub fn run_guest(
    dirs: &Dirs,
    plan: &GuestPlan,
    timeout: Duration,
    started: impl FnOnce(&Qemu),
    each: impl FnMut(&str),
    stop: &dyn Fn() -> bool,
) -> Result<GuestRun> {
    let kernel = kernel(&dirs.cache)?;
    let (initrd, append) = build_guest(&kernel, plan, &dirs.work)?;
    let mut qemu = Qemu::start(&Boot {
        kernel: kernel.vmlinuz.clone(),
        initrd,
        append,
        memory_mb: 1024,
        timeout,
        interactive: false,
    })?;
    started(&qemu);
    let console = qemu.console(each, stop)?;
    GuestRun::parse(&console)
}

/// Writes `text` to `path`, creating its directory.
pub fn save(path: &Path, text: &str) -> Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .map_err(io_err(format!("creating {}", parent.display())))?;
    }
    let mut file =
        std::fs::File::create(path).map_err(io_err(format!("creating {}", path.display())))?;
    file.write_all(text.as_bytes())
        .map_err(io_err(format!("writing {}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_console() {
        let console = "boot noise\n@@tgt-trace-vm ready kernel 6.1.0\n\
            @@tgt-trace-vm status tracer 2\n\
            @@tgt-trace-vm trace unavailable (tgt-trace exited 2 with no trace header)\n\
            @@tgt-trace-vm status scenarios 0\n\
            @@tgt-trace-vm scenarios-begin\n{\"scenario\":\"a\",\"passed\":true}\n\n\
            @@tgt-trace-vm scenarios-end\n\
            @@tgt-trace-vm tracer-stderr-begin\nerror: unexpected argument\n@@tgt-trace-vm tracer-stderr-end\n\
            @@tgt-trace-vm done\n";
        let run = GuestRun::parse(console).expect("parses");
        assert!(run.done);
        assert_eq!(run.scenarios.len(), 1);
        assert_eq!(run.scenario("a").expect("a")["passed"], true);
        assert_eq!(run.statuses["tracer"], "2");
        assert_eq!(run.statuses["scenarios"], "0");
        assert!(run.trace.is_none());
        assert_eq!(
            run.trace_unavailable.as_deref(),
            Some("(tgt-trace exited 2 with no trace header)")
        );
        assert_eq!(run.tracer_stderr, "error: unexpected argument\n");
        assert_eq!(run.kernel_release.as_deref(), Some("6.1.0"));
    }
}
