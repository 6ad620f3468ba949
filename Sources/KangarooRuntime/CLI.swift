import KangarooSystem
#if canImport(Glibc)
import Glibc
#endif

/// runc's command line, parsed by hand (no argument-parser: startup time).
public struct ParsedArguments: Sendable, Equatable {
    public var global: [String: String] = [:]
    public var command: String = ""
    public var flags: [String: [String]] = [:]
    public var positional: [String] = []

    public func flag(_ name: String) -> String? { flags[name]?.last }
    public func has(_ name: String) -> Bool { flags[name] != nil }
    public func all(_ name: String) -> [String] { flags[name] ?? [] }
}

public enum CLI {
    /// Flags taking a value, per command; others are boolean. Short aliases map to long names.
    static let globalValueFlags: Set<String> = ["root", "log", "log-format", "criu", "rootless"]
    static let valueFlags: [String: Set<String>] = [
        "create": ["bundle", "pid-file", "console-socket", "preserve-fds"],
        "run": ["bundle", "pid-file", "console-socket", "preserve-fds"],
        "kill": [],
        "delete": [],
        "list": ["format"],
        "ps": ["format"],
        "exec": ["process", "console-socket", "env", "cwd", "user", "cap", "pid-file", "preserve-fds",
                 "additional-gids", "process-label", "apparmor", "cgroup"],
        "update": ["resources", "blkio-weight", "cpu-period", "cpu-quota", "cpu-rt-period", "cpu-rt-runtime",
                   "cpu-share", "cpuset-cpus", "cpuset-mems", "memory", "memory-reservation", "memory-swap",
                   "pids-limit", "kernel-memory", "kernel-memory-tcp", "l3-cache-schema", "mem-bw-schema"],
        "spec": ["bundle"],
        "events": ["interval"],
    ]
    static let aliases: [String: String] = [
        "b": "bundle", "d": "detach", "f": "format", "a": "all", "t": "tty", "e": "env", "u": "user",
        "c": "cap", "p": "process", "q": "quiet", "r": "resources", "g": "additional-gids",
    ]

    public static func parse(_ argv: [String]) throws(RuntimeError) -> ParsedArguments {
        var out = ParsedArguments()
        var i = 1
        func name(_ arg: String, command: String = "") -> (String, String?) {
            var s = Substring(arg)
            while s.hasPrefix("-") { s = s.dropFirst() }
            var value: String?
            if let eq = s.firstIndex(of: "=") {
                value = String(s[s.index(after: eq)...])
                s = s[..<eq]
            }
            let n = String(s)
            if n == "f" && (command == "delete" || command == "rm") { return ("force", value) }
            return (aliases[n] ?? n, value)
        }
        // Global flags before the command.
        while i < argv.count, argv[i].hasPrefix("-"), argv[i] != "-" {
            let (n, v) = name(argv[i])
            i += 1
            if globalValueFlags.contains(n) {
                if let v { out.global[n] = v } else {
                    guard i < argv.count else { throw RuntimeError(.invalidArgument, "flag --\(n) needs a value") }
                    out.global[n] = argv[i]; i += 1
                }
            } else {
                out.global[n] = v ?? "true"
            }
        }
        guard i < argv.count else { return out }
        out.command = argv[i]
        i += 1
        let takesValue = valueFlags[out.command] ?? []
        var onlyPositional = false
        while i < argv.count {
            let a = argv[i]
            i += 1
            if onlyPositional || !a.hasPrefix("-") || a == "-" {
                out.positional.append(a)
                // After the container id, exec/ps pass the rest through.
                if (out.command == "exec" || out.command == "ps") && out.positional.count == 1 { onlyPositional = true }
                continue
            }
            if a == "--" { onlyPositional = true; continue }
            let (n, v) = name(a, command: out.command)
            if takesValue.contains(n) {
                if let v { out.flags[n, default: []].append(v) } else {
                    guard i < argv.count else { throw RuntimeError(.invalidArgument, "flag --\(n) needs a value") }
                    out.flags[n, default: []].append(argv[i]); i += 1
                }
            } else {
                out.flags[n, default: []].append(v ?? "true")
            }
        }
        return out
    }

    /// Runs one invocation; returns the process exit code.
    public static func main(_ argv: [String]) -> Int32 {
        let args: ParsedArguments
        do { args = try parse(argv) } catch {
            Log.error(error.description)
            return 1
        }
        if let log = args.global["log"] { Log.path = log }
        Log.json = args.global["log-format"] == "json"
        Log.debugEnabled = args.global["debug"] != nil
        if args.global["version"] != nil || args.global["v"] != nil || args.command == "--version" {
            out("kangaroo-runtime version \(Runtime.version)\nspec: \(Runtime.specVersion)\n")
            return 0
        }
        if args.global["help"] != nil || args.global["h"] != nil || args.command.isEmpty || args.command == "help" {
            out(usage)
            return args.command.isEmpty && args.global["help"] == nil && args.global["h"] == nil ? 1 : 0
        }
        let runtime = Runtime(root: args.global["root"] ?? "/run/kangaroo-runtime")
        do {
            return try dispatch(args, runtime)
        } catch {
            Log.error(error.description)
            return 1
        }
    }

    static func out(_ s: String) {
        var bytes = Array(s.utf8)
        var off = 0
        while off < bytes.count {
            let n = bytes.withUnsafeMutableBytes { write(1, $0.baseAddress! + off, $0.count - off) }
            if n < 0 { if errno == EINTR { continue }; return }
            off += n
        }
    }

    static func id(_ args: ParsedArguments) throws(RuntimeError) -> String {
        guard let id = args.positional.first else {
            throw RuntimeError(.invalidArgument, "\(args.command): a container id is required")
        }
        return id
    }

    static func createOptions(_ args: ParsedArguments) throws(RuntimeError) -> CreateOptions {
        var o = CreateOptions()
        o.bundle = args.flag("bundle") ?? "."
        o.pidFile = args.flag("pid-file")
        o.consoleSocket = args.flag("console-socket")
        if let p = args.flag("preserve-fds") {
            guard let n = Int(p), n >= 0 else { throw RuntimeError(.invalidArgument, "--preserve-fds: not a number: \(p)") }
            o.preserveFDs = n
        }
        o.noPivot = args.has("no-pivot")
        o.detach = args.has("detach")
        return o
    }

    static func dispatch(_ args: ParsedArguments, _ runtime: Runtime) throws(RuntimeError) -> Int32 {
        switch args.command {
        case "create":
            try runtime.create(id: try id(args), options: try createOptions(args))
        case "run":
            return try runtime.run(id: try id(args), options: try createOptions(args))
        case "start":
            try runtime.start(id: try id(args))
        case "state":
            out(try runtime.state(try id(args)) + "\n")
        case "kill":
            let sigText = args.positional.count > 1 ? args.positional[1] : "SIGTERM"
            guard let sig = Signals.parse(sigText) else { throw RuntimeError(.invalidArgument, "unknown signal \"\(sigText)\"") }
            try runtime.kill(id: try id(args), signal: sig, all: args.has("all"))
        case "delete":
            try runtime.delete(id: try id(args), force: args.has("force"))
        case "pause":
            try runtime.setPaused(id: try id(args), true)
        case "resume":
            try runtime.setPaused(id: try id(args), false)
        case "list":
            let all = runtime.list()
            if args.has("quiet") {
                out(all.map { $0.0.id + "\n" }.joined())
            } else if args.flag("format") == "json" {
                out(JSON.array(all.map { $0.0.runcState(status: $0.1) }).serialized() + "\n")
            } else {
                let rows = [["ID", "PID", "STATUS", "BUNDLE", "CREATED", "OWNER"]] + all.map { s, st in
                    [s.id, String(st == .stopped ? 0 : s.pid), st.rawValue, s.bundle, s.created, s.owner.isEmpty ? "root" : s.owner]
                }
                out(table(rows))
            }
        case "ps":
            let pids = try runtime.pids(id: try id(args))
            if args.flag("format") == "json" {
                out(JSON.array(pids.map { .int(Int($0)) }).serialized() + "\n")
            } else {
                out(psTable(pids: pids, options: Array(args.positional.dropFirst())))
            }
        case "exec":
            var o = ExecOptions()
            o.processFile = args.flag("process")
            o.args = Array(args.positional.dropFirst())
            o.detach = args.has("detach")
            o.tty = args.has("tty")
            o.consoleSocket = args.flag("console-socket")
            o.env = args.all("env")
            o.cwd = args.flag("cwd")
            o.user = args.flag("user")
            o.caps = args.all("cap")
            o.pidFile = args.flag("pid-file")
            o.noNewPrivileges = args.has("no-new-privs")
            if let p = args.flag("preserve-fds") { o.preserveFDs = Int(p) ?? 0 }
            for g in args.all("additional-gids") {
                guard let v = UInt32(g) else { throw RuntimeError(.invalidArgument, "--additional-gids: not a number: \(g)") }
                o.additionalGids.append(v)
            }
            return try runtime.exec(id: try id(args), options: o)
        case "update":
            try runtime.update(id: try id(args), resources: try updateResources(args))
        case "features":
            out(Runtime.features())
        case "spec":
            let bundle = args.flag("bundle") ?? "."
            let path = Runtime.absolute(bundle) + "/config.json"
            if FileSystem.exists(path) { throw RuntimeError(.exists, "File \(path) exists. Remove it first") }
            do {
                try FileSystem.write(path, Runtime.specTemplate(), flags: O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode: 0o666)
            } catch {
                throw RuntimeError(.system, "write \(path)", errno: error.rawValue)
            }
        case "events":
            throw RuntimeError(.unsupported, "events is not implemented")
        default:
            throw RuntimeError(.invalidArgument, "unknown command \"\(args.command)\"; see kangaroo-runtime --help")
        }
        return 0
    }

    static func updateResources(_ args: ParsedArguments) throws(RuntimeError) -> Resources {
        if let file = args.flag("resources") {
            let text: String
            do { text = try FileSystem.readString(file == "-" ? "/dev/stdin" : file) } catch {
                throw RuntimeError(.invalidArgument, "cannot read \(file)", errno: error.rawValue)
            }
            return try Resources.parse(text, document: file == "-" ? "resources" : file)
        }
        var r = Resources()
        func num(_ flag: String) throws(RuntimeError) -> Int64? {
            guard let v = args.flag(flag) else { return nil }
            guard let n = parseSize(v) else { throw RuntimeError(.invalidArgument, "--\(flag): invalid value \(v)") }
            return n
        }
        if args.has("cpu-share") || args.has("cpu-quota") || args.has("cpu-period") || args.has("cpuset-cpus")
            || args.has("cpuset-mems") || args.has("cpu-rt-period") || args.has("cpu-rt-runtime") {
            r.cpu = Resources.CPU(shares: try num("cpu-share").map { UInt64($0) }, quota: try num("cpu-quota"),
                                  period: try num("cpu-period").map { UInt64($0) },
                                  realtimeRuntime: try num("cpu-rt-runtime"),
                                  realtimePeriod: try num("cpu-rt-period").map { UInt64($0) },
                                  cpus: args.flag("cpuset-cpus"), mems: args.flag("cpuset-mems"), idle: nil)
        }
        if args.has("memory") || args.has("memory-reservation") || args.has("memory-swap") {
            r.memory = Resources.Memory(limit: try num("memory"), reservation: try num("memory-reservation"),
                                        swap: try num("memory-swap"), swappiness: nil, disableOOMKiller: nil)
        }
        if let p = try num("pids-limit") { r.pidsLimit = p }
        if let w = try num("blkio-weight") {
            var io = Resources.BlockIO()
            io.weight = UInt16(clamping: w)
            r.blockIO = io
        }
        return r
    }

    /// "1024", "64k", "100m", "1g" (powers of 1024), "-1".
    public static func parseSize(_ s: String) -> Int64? {
        if let v = Int64(s) { return v }
        let lower = s.lowercased()
        var digits = Substring(lower)
        if digits.hasSuffix("b") { digits = digits.dropLast() }
        guard let unit = digits.last else { return nil }
        let mult: Int64
        switch unit {
        case "k": mult = 1 << 10
        case "m": mult = 1 << 20
        case "g": mult = 1 << 30
        case "t": mult = 1 << 40
        default: return nil
        }
        guard let v = Int64(digits.dropLast()) else { return nil }
        return v * mult
    }

    /// A tabwriter-like table (min width 12, padding 3), as runc prints `list`.
    static func table(_ rows: [[String]]) -> String {
        guard let first = rows.first else { return "" }
        var widths = [Int](repeating: 0, count: first.count)
        for r in rows { for (i, c) in r.enumerated() { widths[i] = max(widths[i], c.count) } }
        var s = ""
        for r in rows {
            for (i, c) in r.enumerated() {
                s += c
                if i < r.count - 1 { s += String(repeating: " ", count: max(12, widths[i] + 3) - c.count) }
            }
            s += "\n"
        }
        return s
    }

    /// `ps` output filtered to the container's pids (runc runs `ps -ef`).
    static func psTable(pids: [Int32], options: [String]) -> String {
        let cmd = "ps " + (options.isEmpty ? "-ef" : options.joined(separator: " "))
        guard let f = popen(cmd, "r") else { return "" }
        defer { pclose(f) }
        var lines: [String] = []
        var buf = [CChar](repeating: 0, count: 8192)
        while fgets(&buf, Int32(buf.count), f) != nil {
            lines.append(String(decoding: buf.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self))
        }
        guard let header = lines.first else { return "" }
        let cols = header.split(separator: " ", omittingEmptySubsequences: true)
        guard let pidCol = cols.firstIndex(where: { $0 == "PID" }) else { return lines.joined() }
        let set = Set(pids)
        var out = header
        for l in lines.dropFirst() {
            let f = l.split(separator: " ", omittingEmptySubsequences: true)
            if pidCol < f.count, let p = Int32(f[pidCol]), set.contains(p) { out += l }
        }
        return out
    }

    static let usage = """
    kangaroo-runtime: an OCI runtime with runc's command line

    usage: kangaroo-runtime [--root DIR] [--log FILE] [--log-format text|json] [--debug] COMMAND [flags] ID

    commands:
      create   --bundle DIR [--pid-file F] [--console-socket S] [--preserve-fds N] [--no-pivot] ID
      start    ID
      run      [-d] --bundle DIR [--pid-file F] [--console-socket S] ID
      state    ID
      kill     [--all] ID [SIGNAL]
      delete   [--force] ID
      list     [--format table|json] [-q]
      ps       [--format table|json] ID [ps options]
      exec     [--process FILE | ID ARGS...] [-d] [--tty] [--console-socket S] [--env K=V] [--cwd D] [--user U[:G]] [--cap C]
      pause    ID
      resume   ID
      update   [--resources FILE|-] [--memory N] [--cpu-share N] [--cpu-quota N] [--pids-limit N] ... ID
      features
      spec     [--bundle DIR]

    """
}
