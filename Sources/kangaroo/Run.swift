import ArgumentParser
import CKangaroo
import Foundation
import KangarooImage
import KangarooNetwork
import KangarooNode
import KangarooOCI

/// `kangaroo run`: image -> lazy mount (registry images) or kernel EROFS
/// mount (cached per image) -> overlayfs per container -> OCI bundle ->
/// kangaroo-runtime.
struct RunCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "run",
        abstract: "Run a command in a new container from a Kangaroo image.",
        discussion: """
        IMAGE is a store name, oci:DIR[:TAG] or a registry reference. A registry image is mounted lazily \
        (kangaroo image mount --daemon: only its manifest, config and bootstrap are pulled, file data is fetched \
        on first read into the chunk cache $KANGAROO_STATE_DIR/cache; with a complete cache the kernel's EROFS \
        driver mounts it) at $KANGAROO_STATE_DIR/images/<manifest>/lazy (default state dir /var/lib/kangaroo). \
        A store or oci: image (or any with --no-lazy, which pulls a registry image whole first) is \
        materialized once under $KANGAROO_STATE_DIR/images and mounted read-only with the kernel's EROFS driver. \
        Either mount is shared by the containers of the image and removed with the last of them. A \
        per-container overlayfs goes on top, and kangaroo-runtime (next to this binary, or $KANGAROO_RUNTIME) \
        runs it. In the foreground the exit status is the container's.
        """)

    @OptionGroup var options: GlobalOptions
    @Flag(help: "Remove the container and its rootfs after it exits.") var rm = false
    @Flag(name: .shortAndLong, help: "Detach: create and start the container, print its id.") var detach = false
    @Option(help: "Container name (also its hostname).") var name: String?
    @Option(help: "Memory limit in bytes (K, M, G suffixes).") var memory: String?
    @Option(help: "CPUs (fractions allowed): CFS quota over a 100 ms period.") var cpus: Double?
    @Option(name: [.short, .long], help: "Set an environment variable (KEY=VALUE).") var env: [String] = []
    @Flag(name: [.long, .customLong("timing")], help: "Print to stderr how long the steps took.") var time = false
    @Option(help: ArgumentHelp("none: a network namespace of its own with loopback only; host: the node's; pod: its own on the node's pod network (kangaroo-cni's, from --network-config), with an address, a route out through NAT.", valueName: "mode"))
    var network: String = "none"
    @Option(help: ArgumentHelp("Give the container a disk of its own of this size (K, M, G suffixes) from the node's disk pool (kangaroo disk): its writable layer lives there, so filling it gives ENOSPC and touches nothing else.", valueName: "size"))
    var diskSize: String?
    @OptionGroup var disks: DiskOptions
    @Flag(help: "Run in a user namespace of its own: root inside is a range of 65,536 host ids no other container has; the image appears with its owners through an idmapped mount.")
    var userns = false
    @Option(help: ArgumentHelp("The pod network's configuration for --network pod (a kangaroo-cni .conf/.conflist); without the file, the built-in default (bridge kgr0, 10.77.0.0/16).", valueName: "path"))
    var networkConfig: String = RunCommand.defaultNetworkConfig
    @Flag(inversion: .prefixedNo, help: "Mount the image lazily (data fetched on first read); default: on for registry references only.")
    var lazy: Bool?
    @Argument(help: "The image (store name, registry reference or oci:DIR:TAG).") var image: String
    @Argument(parsing: .captureForPassthrough, help: "Command and arguments (default: the image's Entrypoint and Cmd).")
    var command: [String] = []

    func run() async throws {
        let started = Date()
        let logger = options.makeLogger()
        let progress = TerminalProgress(enabled: options.showProgress)
        let paths = StatePaths()
        var record: ContainerRecord?
        var runtime: RuntimeClient?
        var marks: [(String, Date)] = []
        do {
            if rm && detach { throw CLIError("--rm with -d is not supported: remove it with kangaroo rm after it stops") }
            let memoryLimit: Int64? = try memory.map {
                guard let n = parseSize($0), n > 0 else { throw CLIError("--memory '\($0)' is not a size (e.g. 64M)") }
                return Int64(n)
            }
            if let cpus, !(cpus > 0 && cpus <= 1024) { throw CLIError("--cpus must be > 0") }
            guard ["none", "host", "pod"].contains(network) else { throw CLIError("--network '\(network)' is not one of none, host, pod") }
            let podNetwork = network == "pod" ? try Self.loadNetwork(networkConfig) : nil
            let diskBytes: UInt64? = try diskSize.map {
                guard let n = parseSize($0), n >= 16 << 20 else { throw CLIError("--disk-size '\($0)' is not a size of at least 16M") }
                return UInt64(n)
            }
            if let name, !Self.validName(name) {
                throw CLIError("--name '\(name)' must be 1-63 characters of a-z A-Z 0-9 . - and start with a letter or digit")
            }
            let rt = try RuntimeClient(paths: paths)
            runtime = rt

            // 1. the image and its config (only those and the bootstrap for a lazy mount)
            let kimage: KangarooImage, layout: OCILayout
            var lazyReference: String?
            var credentials: RegistryCredentials?
            if case .registry(let reference) = try ImageLocation.parse(image), lazy ?? true {
                credentials = try options.credentials()
                let pinned: Reference
                (kimage, layout, pinned) = try await options.openLazyImage(reference, credentials: credentials, logger: logger)
                lazyReference = pinned.description
            } else {
                (kimage, layout) = try await options.openKangarooImage(image, logger: logger, progress: progress)
                if lazy == true { lazyReference = image }
            }
            let imageConfig = try layout.readConfig(kimage.manifest).config
            let key = kimage.manifestDescriptor?.digest.encoded ?? kimage.bootstrapDescriptor.digest.encoded
            marks.append(("image", Date()))

            // 2. the container record (before any mount, so teardown finds everything)
            try FileManager.default.createDirectory(atPath: paths.containers, withIntermediateDirectories: true)
            let id = try Self.newID(paths)
            let cname = name ?? "kangaroo-" + String(id.prefix(8))
            guard !ContainerRecord.all(paths).contains(where: { $0.name == cname }) else {
                throw CLIError("the name '\(cname)' is in use: kangaroo rm \(cname) first")
            }
            let r = ContainerRecord(id: id, name: cname, image: image, imageKey: key,
                                    created: Date().timeIntervalSince1970, detached: detach)
            record = r
            let dir = paths.container(id)
            // Root's alone (the container's range's with --userns, for its
            // root to walk to the rootfs): no other container's escaped
            // process reads its rootfs, layers or disk from the host.
            try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: false, attributes: [.posixPermissions: 0o700])
            try r.save(paths)

            // 3. read-only image mount (shared), overlay on top
            var userRange: UInt32?
            try ImageRootfs.withLock(paths, key) {
                let lower: String
                if let lazyReference {
                    let (mnt, reused) = try ImageRootfs.mountLazy(lazyReference, paths: paths, key: key, options: options,
                                                                  credentials: credentials)
                    lower = mnt
                    marks.append((reused ? "lazy mount (reused)" : "lazy mount", Date()))
                } else {
                    lower = try Self.mountImage(kimage, layout: layout, directory: paths.image(key))
                    marks.append(("image mount", Date()))
                }
                var writable = dir
                var layer = lower
                if userns {
                    userRange = try Self.mapImage(lower, id: id, dir: dir, paths: paths)
                    if let userRange, chown(dir, userRange, userRange) != 0 {
                        throw CLIError("cannot give \(dir) to the container's ids: \(String(cString: strerror(errno)))")
                    }
                    layer = dir + "/lower"
                    marks.append(("idmapped image", Date()))
                }
                if let diskBytes {
                    writable = try Self.mountDisk(disks, size: diskBytes, id: id, dir: dir)
                    marks.append(("disk", Date()))
                }
                for sub in ["upper", "work"] {
                    try FileManager.default.createDirectory(atPath: writable + "/" + sub, withIntermediateDirectories: false)
                    // The container's root writes as the range's first id.
                    if let userRange, chown(writable + "/" + sub, userRange, userRange) != 0 {
                        throw CLIError("cannot give \(writable)/\(sub) to the container's ids: \(String(cString: strerror(errno)))")
                    }
                }
                try FileManager.default.createDirectory(atPath: dir + "/rootfs", withIntermediateDirectories: false)
                let data = "lowerdir=\(layer),upperdir=\(writable)/upper,workdir=\(writable)/work"
                guard mount("overlay", dir + "/rootfs", "overlay", 0, data) == 0 else {
                    throw CLIError("mounting overlayfs at \(dir)/rootfs failed: \(String(cString: strerror(errno)))")
                }
            }
            marks.append(("overlay", Date()))

            // 4. the network (recorded first, so teardown finds it)
            let rootfs = r.rootfs(paths)
            var netns: String?
            if let podNetwork {
                try Self.attachNetwork(podNetwork, configPath: networkConfig, id: id, dir: dir, rootfs: rootfs)
                netns = dir + "/netns"
                marks.append(("network", Date()))
            }

            // 5. the bundle
            try RootFile.write(rootfs, ["etc", "hostname"], cname + "\n")
            try RootFile.write(rootfs, ["etc", "hosts"], "127.0.0.1\tlocalhost\n::1\tlocalhost\n127.0.1.1\t\(cname)\n")
            let config = try BundleConfig.make(id: id, hostname: cname, image: imageConfig, command: command,
                                               extraEnv: env, memory: memoryLimit, cpus: cpus, rootfs: rootfs,
                                               network: network, netns: netns, userRange: userRange)
            try config.write(to: dir + "/config.json")

            // 6. the container
            if detach {
                let logPath = dir + "/output.log"
                FileManager.default.createFile(atPath: logPath, contents: nil)
                let log = open(logPath, O_WRONLY | O_APPEND | O_CLOEXEC)
                guard log >= 0 else { throw CLIError("cannot open \(logPath): \(String(cString: strerror(errno)))") }
                let created = try rt.call(["create", "--bundle", dir, id], stdout: log, stderr: log)
                close(log)
                guard created == 0 else { throw CLIError("kangaroo-runtime create failed: \(Self.tail(logPath))") }
                guard try rt.call(["start", id], stderr: 2) == 0 else {
                    throw CLIError("kangaroo-runtime start failed: \(Self.tail(logPath))")
                }
                marks.append(("container", Date()))
                print(id)
                report(started, marks)
                return
            }
            let pid = try rt.spawn(["run", "--bundle", dir, id])
            let forwarders = Self.forwardSignals(to: pid)
            let status = RuntimeClient.wait(pid)
            forwarders.forEach { $0.cancel() }
            marks.append(("container", Date()))
            if rm {
                try teardown(r, paths: paths, runtime: rt)
            } else {
                var done = r
                done.exitCode = status
                try done.save(paths)
                if ImageRootfs.isMounted(rootfs) { umount2(rootfs, Int32(MNT_DETACH)) }
                try? ImageRootfs.release(paths, key)
            }
            report(started, marks)
            Glibc.exit(status)
        } catch {
            progress.finish()
            if let record {
                do { try teardown(record, paths: paths, runtime: runtime) } catch {
                    FileHandle.standardError.write(Data("kangaroo: cleanup of \(record.id) incomplete: \(error)\n".utf8))
                }
            }
            fail(error)
        }
    }

    static let defaultNetworkConfig = "/etc/kangaroo/network.conf"

    /// --userns: the container's id range, and the image mounted idmapped
    /// with it at DIR/lower (the range's first id sees the image's root).
    static func mapImage(_ image: String, id: String, dir: String, paths: StatePaths) throws -> UInt32 {
        let base: UInt32
        do { base = try IDRangePool(directory: paths.stateDirectory + "/idranges").acquire(owner: id) } catch {
            throw CLIError("--userns: \(error)")
        }
        try "\(base)\n".write(toFile: dir + "/userns", atomically: true, encoding: .utf8)
        try FileManager.default.createDirectory(atPath: dir + "/lower", withIntermediateDirectories: false)
        let rc = kr_idmapped_mount(image, dir + "/lower", base, 65536)
        guard rc == 0 else {
            throw CLIError("--userns: cannot mount the image idmapped (\(String(cString: strerror(-rc))))"
                           + (rc == -EINVAL ? "; a lazy (FUSE) image cannot be idmapped yet: use --no-lazy" : ""))
        }
        return base
    }

    /// The container's disk from the pool, mounted at DIR/disk (ext4); its
    /// pool options in DIR/disk.json for teardown. Returns DIR/disk.
    static func mountDisk(_ options: DiskOptions, size: UInt64, id: String, dir: String) throws -> String {
        let config = try options.config()
        try JSONSerialization.data(withJSONObject: ["file": config.nodeFile, "state": config.stateDir, "nodeSize": config.nodeSize,
                                                    "defaultSize": config.defaultSize, "pool": config.poolSize])
            .write(to: URL(fileURLWithPath: dir + "/disk.json"))
        let disk: Disk
        do { disk = try DiskPool(config: config).acquire(owner: id, size: size) } catch { throw CLIError("--disk-size: \(error)") }
        let mnt = dir + "/disk"
        try FileManager.default.createDirectory(atPath: mnt, withIntermediateDirectories: false)
        guard mount(disk.device!, mnt, "ext4", 0, "") == 0 else {
            throw CLIError("mounting the container's disk \(disk.device!) at \(mnt) failed: \(String(cString: strerror(errno)))")
        }
        return mnt
    }

    static func loadNetwork(_ path: String) throws -> NetworkConfig {
        if path == defaultNetworkConfig && !FileManager.default.fileExists(atPath: path) { return NetworkConfig() }
        do { return try NetworkConfig.load(path) } catch { throw CLIError("--network-config: \(error)") }
    }

    /// The container's namespace pinned at DIR/netns on the pod network; the
    /// configuration's path in DIR/network for teardown; resolv.conf from
    /// the configuration's DNS servers, if it names any.
    static func attachNetwork(_ config: NetworkConfig, configPath: String, id: String, dir: String, rootfs: String) throws {
        try configPath.write(toFile: dir + "/network", atomically: true, encoding: .utf8)
        do {
            try NetworkNamespace.create(at: dir + "/netns")
            _ = try PodNetwork(config: config).attach(containerID: id, ifname: "eth0", netns: dir + "/netns", loopback: true)
        } catch {
            throw CLIError("--network pod: \(error)")
        }
        if let servers = config.dns?["nameservers"]?.array?.compactMap(\.string), !servers.isEmpty {
            let search = config.dns?["search"]?.array?.compactMap(\.string) ?? []
            try RootFile.write(rootfs, ["etc", "resolv.conf"],
                               servers.map { "nameserver \($0)\n" }.joined() + (search.isEmpty ? "" : "search \(search.joined(separator: " "))\n"))
        }
    }

    private func report(_ started: Date, _ marks: [(String, Date)]) {
        guard time else { return }
        var last = started
        var parts: [String] = []
        for (label, at) in marks {
            parts.append(label + " " + String(format: "%.1f ms", at.timeIntervalSince(last) * 1000))
            last = at
        }
        let total = String(format: "%.1f", Date().timeIntervalSince(started) * 1000)
        FileHandle.standardError.write(Data("kangaroo: run took \(total) ms (\(parts.joined(separator: ", ")))\n".utf8))
    }

    /// Materializes the image into DIR/erofs once (atomically, by rename) and
    /// mounts it read-only at DIR/rootfs unless already mounted; returns DIR/rootfs.
    static func mountImage(_ image: KangarooImage, layout: OCILayout, directory: String) throws -> String {
        let mnt = directory + "/rootfs", files = directory + "/erofs"
        if ImageRootfs.isMounted(mnt) { return mnt }
        if !FileManager.default.fileExists(atPath: files + "/bootstrap") {
            let tmp = files + ".tmp-\(getpid())"
            try? FileManager.default.removeItem(atPath: tmp)
            do {
                _ = try image.materialize(to: tmp, source: LayoutChunkSource(layout: layout, image: image))
                try? FileManager.default.removeItem(atPath: files)
                guard rename(tmp, files) == 0 else { throw CLIError("cannot rename \(tmp): \(String(cString: strerror(errno)))") }
            } catch {
                try? FileManager.default.removeItem(atPath: tmp)
                throw error
            }
        }
        let options = image.bootstrap.blobs.map { "device=\(files)/\($0.digestHex).blob" }.joined(separator: ",")
        try FileManager.default.createDirectory(atPath: mnt, withIntermediateDirectories: true)
        guard mount(files + "/bootstrap", mnt, "erofs", UInt(MS_RDONLY), options) == 0 else {
            let e = errno
            throw CLIError("mounting the image (erofs) at \(mnt) failed: \(String(cString: strerror(e)))"
                           + (e == EPERM ? "; kangaroo run needs root" : ""))
        }
        return mnt
    }

    static func newID(_ paths: StatePaths) throws -> String {
        for _ in 0..<16 {
            let id = (0..<6).map { _ in String(format: "%02x", UInt8.random(in: 0...255)) }.joined()
            if !FileManager.default.fileExists(atPath: paths.container(id)) { return id }
        }
        throw CLIError("cannot allocate a container id in \(paths.containers)")
    }

    static func validName(_ name: String) -> Bool {
        guard let first = name.unicodeScalars.first, name.count <= 63,
              CharacterSet.alphanumerics.contains(first), first.isASCII else { return false }
        return name.unicodeScalars.allSatisfy { $0.isASCII && (CharacterSet.alphanumerics.contains($0) || "._-".unicodeScalars.contains($0)) }
    }

    static func tail(_ path: String) -> String {
        let text = (try? String(contentsOfFile: path, encoding: .utf8)) ?? ""
        return String(text.trimmingCharacters(in: .whitespacesAndNewlines).suffix(2000))
    }

    /// SIGINT/TERM/HUP/QUIT go to the runtime (which passes them to the container).
    static func forwardSignals(to pid: Int32) -> [DispatchSourceSignal] {
        [SIGINT, SIGTERM, SIGHUP, SIGQUIT].map { sig in
            signal(sig, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: sig, queue: .global())
            source.setEventHandler { kill(pid, sig) }
            source.resume()
            return source
        }
    }
}
