import ArgumentParser
import Foundation
import KangarooOCI
import Logging
import SystemPackage

/// Options every command that touches images takes.
struct GlobalOptions: ParsableArguments {
    @Option(name: .long, help: ArgumentHelp("The local image store (an OCI layout directory).", valueName: "dir"))
    var store: String = ProcessInfo.processInfo.environment["KANGAROO_STORE"] ?? "/var/lib/kangaroo/store"

    @Flag(name: [.short, .long], help: "No progress output (also implied when stderr is not a terminal).")
    var quiet = false

    @Option(name: .long, help: ArgumentHelp("Log level: trace, debug, info, notice, warning, error, critical.", valueName: "level"))
    var logLevel: String = ProcessInfo.processInfo.environment["KANGAROO_LOG_LEVEL"] ?? "warning"

    @Option(name: .long, help: ArgumentHelp("Registry user name (or KANGAROO_REGISTRY_USER).", valueName: "name"))
    var username: String?

    @Flag(name: .long, help: "Read the registry password from standard input (or KANGAROO_REGISTRY_PASSWORD).")
    var passwordStdin = false

    @Flag(name: .long, help: "Use plain HTTP for registries other than localhost/127.0.0.1.")
    var plainHTTP = false

    @Option(name: .long, help: ArgumentHelp("Registry mirrors: DIR/<registry host>/hosts.toml (containerd's format; or DIR/_default/hosts.toml), or KANGAROO_HOSTS_DIR.", valueName: "dir"))
    var hostsDir: String = ProcessInfo.processInfo.environment["KANGAROO_HOSTS_DIR"] ?? RegistryHosts.defaultDirectory

    /// Progress goes to a terminal only.
    var showProgress: Bool { !quiet && isatty(STDERR_FILENO) == 1 }

    func makeLogger(_ label: String = "kangaroo") -> Logger {
        LoggingSetup.bootstrap(level: Logger.Level(rawValue: logLevel) ?? .warning)
        var logger = Logger(label: label)
        logger.logLevel = Logger.Level(rawValue: logLevel) ?? .warning
        return logger
    }

    func openStore() throws -> OCILayout {
        try OCILayout(at: FilePath(store), create: true)
    }

    func credentials() throws -> RegistryCredentials? {
        let env = ProcessInfo.processInfo.environment
        guard let user = username ?? env["KANGAROO_REGISTRY_USER"] else { return nil }
        var password = env["KANGAROO_REGISTRY_PASSWORD"] ?? ""
        if passwordStdin {
            password = readLine(strippingNewline: true) ?? ""
        }
        return RegistryCredentials(username: user, password: password)
    }
}
