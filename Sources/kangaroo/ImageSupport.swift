import ArgumentParser
import Foundation
import KangarooImage
import KangarooOCI
import KangarooP2P
import Logging
import SystemPackage

/// A user-facing failure: the message is printed as is, exit status 1.
struct CLIError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

/// Store tags are `name:tag`; a bare name gets `:latest`.
func storeTag(_ name: String) -> String {
    if let colon = name.lastIndex(of: ":"), !name[name.index(after: colon)...].contains("/") { return name }
    return name + ":latest"
}

extension GlobalOptions {
    /// `credentials` when given, else the user's (`credentials()`).
    func registryClient(for reference: Reference, logger: Logger, credentials known: RegistryCredentials? = nil) throws -> RegistryClient {
        let creds = try (known ?? credentials()).map { RegistryClient.Credentials(username: $0.username, password: $0.password) }
        return RegistryClient(host: reference.host, plainHTTP: plainHTTP ? true : nil, credentials: creds,
                              timeout: registryTimeout, retries: registryRetries, logger: logger)
    }

    /// The hosts `reference`'s content may come from (`--hosts-dir`,
    /// containerd's hosts.toml format); ignored keys are logged.
    func registryHosts(for reference: Reference, logger: Logger) throws -> RegistryHosts {
        let hosts = try RegistryHosts.load(registry: reference.host, directory: hostsDir, plainHTTP: plainHTTP)
        for warning in hosts.warnings { logger.warning("\(warning)") }
        return hosts
    }

    /// Runs `body` against the hosts trusted to resolve `reference` (its
    /// mirrors in order, then the registry), each with a client shut down
    /// afterwards, until one succeeds. A mirror's failure is logged and the
    /// next host tried; the registry's is thrown.
    @discardableResult
    func withPullHosts<T>(_ reference: Reference, logger: Logger, credentials: RegistryCredentials? = nil,
                          _ body: (RegistryClient) async throws -> T) async throws -> T {
        let hosts = try registryHosts(for: reference, logger: logger).hosts(for: .resolve)
        guard !hosts.isEmpty else {
            throw CLIError("the registry hosts of \(reference.host) (\(hostsDir)) name no host that may resolve \(reference)")
        }
        let creds = try (credentials ?? self.credentials()).map { RegistryClient.Credentials(username: $0.username, password: $0.password) }
        var failures: [String] = []
        for (index, host) in hosts.enumerated() {
            let client = host.client(credentials: creds, timeout: registryTimeout, retries: registryRetries, logger: logger)
            do {
                let result = try await body(client)
                await client.shutdown()
                return result
            } catch {
                await client.shutdown()
                guard host.isMirror, index < hosts.count - 1 else {
                    if failures.isEmpty { throw error }
                    throw CLIError("\(error) (after mirrors failed: \(failures.joined(separator: "; ")))")
                }
                logger.warning("mirror \(host.url) failed for \(reference), trying the next host: \(error)")
                failures.append("\(host.url): \(error)")
            }
        }
        throw CLIError("every host of \(reference.host) failed: \(failures.joined(separator: "; "))")
    }

    var registryRetries: Int { ProcessInfo.processInfo.environment["KANGAROO_REGISTRY_RETRIES"].flatMap(Int.init) ?? 3 }
    var registryTimeout: Duration { .seconds(ProcessInfo.processInfo.environment["KANGAROO_REGISTRY_TIMEOUT"].flatMap(Int.init) ?? 30) }

    /// Runs `body` with a registry client that is shut down afterwards.
    func withRegistry<T>(_ reference: Reference, logger: Logger, credentials: RegistryCredentials? = nil,
                         _ body: (RegistryClient) async throws -> T) async throws -> T {
        let client = try registryClient(for: reference, logger: logger, credentials: credentials)
        do {
            let result = try await body(client)
            await client.shutdown()
            return result
        } catch {
            await client.shutdown()
            throw error
        }
    }

    /// Finds the OCI image `location` names as a layout and tag; a registry
    /// image is pulled into the store first (tagged with its reference).
    func openImage(_ location: ImageLocation, logger: Logger, progress: TerminalProgress) async throws -> (OCILayout, String) {
        switch location {
        case .ociLayout(let path, let tag):
            return (try OCILayout(at: path, create: false), tag)
        case .store(let name):
            return (try openStore(), storeTag(name))
        case .registry(let reference):
            let store = try openStore()
            let tag = reference.description
            try await withPullHosts(reference, logger: logger) { client in
                try await ImageTransfer(client: client, logger: logger).pull(reference, into: store, tag: tag) { done, total in
                    progress.update("pulling \(reference)", done: done, total: total)
                }
            }
            progress.finish()
            return (store, tag)
        }
    }
}

extension GlobalOptions {
    /// For a lazy mount of a registry image: pulls only its manifest, config
    /// and bootstrap into the store (tagged with `reference`) and loads it.
    /// Also returns `reference` pinned to the manifest's digest, so that a
    /// mount of it shows this very image even if the tag moves.
    func openLazyImage(_ reference: Reference, credentials: RegistryCredentials?,
                       logger: Logger) async throws -> (KangarooImage, OCILayout, Reference) {
        let store = try openStore()
        let descriptor = try await withPullHosts(reference, logger: logger, credentials: credentials) { client in
            try await pullBootstrap(reference, client: client, into: store, logger: logger)
        }
        let pinned = try Reference(host: reference.host, repository: reference.repository, tag: reference.tag,
                                   digest: descriptor.digest)
        return (try KangarooImage.load(from: store, descriptor: descriptor), store, pinned)
    }
}

/// Pulls only the manifest, config and bootstrap of the Kangaroo image
/// `reference` into `store` (tagged with the reference), with one manifest
/// request; returns the manifest's descriptor. File data stays remote.
/// The manifest from the registry, then the bootstrap: from another node
/// when `peers` finds one that holds it (checked against its digest), else
/// from the registry; announced once in the store.
func pullBootstrap(_ reference: Reference, client: RegistryClient, into store: OCILayout, peers: PeerBlobSource? = nil,
                   logger: Logger) async throws -> Descriptor {
    let resolved = try await client.resolveManifest(reference)
    guard let first = resolved.manifest.layers.first, KangarooMediaTypes.isBootstrap(first.mediaType) else {
        throw CLIError("\(reference) is an OCI image, not a Kangaroo image: convert it first (kangaroo image convert \(reference) NAME)")
    }
    if let peers, !store.hasBlob(first.digest), let bytes = peers.wholeBlob(first.digest, size: first.size) {
        _ = try store.writeBlob(bytes: bytes)
    }
    let descriptor = try await ImageTransfer(client: client, logger: logger).pull(
        reference, into: store, tag: reference.description, onlyLayers: [first.digest], resolved: resolved).1
    peers?.storedWhole(first.digest)
    return descriptor
}

struct RegistryCredentials {
    var username: String
    var password: String
}

/// Prints an error the way every command does and exits 1.
func fail(_ error: any Error) -> Never {
    let message: String
    switch error {
    case let e as OCIError: message = e.description
    case let e as CLIError: message = e.description
    default: message = String(describing: error)
    }
    FileHandle.standardError.write(Data("kangaroo: \(message)\n".utf8))
    exit(1)
}
