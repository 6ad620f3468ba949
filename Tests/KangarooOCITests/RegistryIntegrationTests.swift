import Foundation
import Logging
import SystemPackage
import Testing
@testable import KangarooOCI

/// Against a real docker-registry child process on 127.0.0.1 (KANGAROO_INTEGRATION=1).
@Suite(.enabled(if: integrationEnabled, "needs KANGAROO_INTEGRATION=1 and docker-registry"), .serialized)
struct RegistryIntegrationTests {
    static func randomFile(_ dir: TempDir, _ name: String, size: Int) throws -> (FilePath, Digest, [UInt8]) {
        try sh("head -c \(size) /dev/urandom > \(name)", cwd: dir.path)
        let bytes = try readBytes(dir.file(name))
        return (FilePath(dir.file(name)), Digest.sha256(of: bytes), bytes)
    }

    /// Pushes a config + manifest referencing `layers` and returns the manifest digest.
    static func pushImage(_ client: RegistryClient, repository: String, tag: String, layers: [Descriptor]) async throws -> Digest {
        let config = ImageConfiguration(architecture: "amd64", os: "linux", rootfs: .init(diffIDs: layers.map(\.digest)))
        let configBytes = try CanonicalJSON.encode(config)
        let configDigest = try await client.pushBlob(repository: repository, bytes: configBytes)
        let manifest = ImageManifest(config: Descriptor(mediaType: MediaTypes.imageConfig, digest: configDigest,
                                                        size: Int64(configBytes.count)), layers: layers)
        return try await client.pushManifest(repository: repository, tag: tag, bytes: CanonicalJSON.encode(manifest),
                                             mediaType: MediaTypes.imageManifest)
    }

    @Test func pushPullMonolithicChunkedMountAndRanges() async throws {
        let registry = try await TestRegistry.start()
        defer { registry.stop() }
        let dir = try TempDir()
        defer { dir.remove() }
        let client = RegistryClient(host: registry.host, credentials: nil)
        defer { Task { await client.shutdown() } }

        let (file1, digest1, bytes1) = try Self.randomFile(dir, "b1", size: 3_000_000)
        let (file2, digest2, bytes2) = try Self.randomFile(dir, "b2", size: 2_500_001)
        #expect(await client.blobExists(repository: "test/one", digest: digest1) == nil)
        try await client.pushBlob(repository: "test/one", from: file1, digest: digest1, size: 3_000_000)
        try await client.pushBlob(repository: "test/one", from: file2, digest: digest2, size: 2_500_001, chunkSize: 1 << 20)
        #expect(await client.blobExists(repository: "test/one", digest: digest1)?.size == 3_000_000)
        #expect(await client.blobExists(repository: "test/one", digest: digest2)?.size == 2_500_001)
        // Pushing again is a no-op (HEAD finds it).
        try await client.pushBlob(repository: "test/one", from: file1, digest: digest1, size: 3_000_000)

        // Full download with verification and progress.
        let progressCalls = Counter()
        let size = try await client.fetchBlob(repository: "test/one", digest: digest2, to: FilePath(dir.file("out2")),
                                              progress: { _, _ in progressCalls.increment() })
        #expect(size == 2_500_001)
        #expect(try readBytes(dir.file("out2")) == bytes2)
        #expect(progressCalls.value > 0)

        // Range GETs: middle, tail past the end, first byte.
        #expect(try await client.fetchBlobRange(repository: "test/one", digest: digest1, range: 1000..<70000) == Array(bytes1[1000..<70000]))
        #expect(try await client.fetchBlobRange(repository: "test/one", digest: digest1, range: 2_999_990..<3_000_100) == Array(bytes1[2_999_990...]))
        #expect(try await client.fetchBlobRange(repository: "test/one", digest: digest1, range: 0..<1) == [bytes1[0]])

        // Cross-repository mount: no data is sent, the blob appears in the other repository.
        try await client.pushBlob(repository: "test/two", from: FilePath("/nonexistent"), digest: digest1, size: 3_000_000,
                                  mountFrom: "test/one")
        #expect(await client.blobExists(repository: "test/two", digest: digest1) != nil)

        // A mount from a repository without the blob falls back to an upload (202).
        let (file3, digest3, _) = try Self.randomFile(dir, "b3", size: 1000)
        try await client.pushBlob(repository: "test/three", from: file3, digest: digest3, size: 1000, mountFrom: "test/nothing")
        #expect(await client.blobExists(repository: "test/three", digest: digest3)?.size == 1000)

        // Manifests by tag and digest.
        let layers = [Descriptor(mediaType: MediaTypes.layerGzip, digest: digest1, size: 3_000_000)]
        let manifestDigest = try await Self.pushImage(client, repository: "test/one", tag: "v1", layers: layers)
        let (manifest, descriptor) = try await client.manifest(Reference(parsing: "\(registry.host)/test/one:v1"))
        #expect(manifest.layers == layers)
        #expect(descriptor.digest == manifestDigest)
        let byDigest = try await client.fetchManifestBytes(repository: "test/one", reference: manifestDigest.description)
        #expect(byDigest.digest == manifestDigest && byDigest.mediaType == MediaTypes.imageManifest)

        // Errors name what failed.
        do {
            _ = try await client.manifest(Reference(parsing: "\(registry.host)/test/one:missing"))
            Issue.record("missing tag resolved")
        } catch {
            #expect(error.code == .notFound)
            #expect(error.message.contains("MANIFEST_UNKNOWN") && error.message.contains("404"), "\(error)")
        }
        // Corrupt upload: a wrong digest is refused by the registry.
        await #expect(throws: OCIError.self) {
            try await client.pushBlob(repository: "test/one", from: file3, digest: Digest.sha256(of: [1]), size: 1000)
        }
    }

    @Test func indexIsResolvedByPlatform() async throws {
        let registry = try await TestRegistry.start()
        defer { registry.stop() }
        let client = RegistryClient(host: registry.host, credentials: nil)
        defer { Task { await client.shutdown() } }
        let layerA = try await client.pushBlob(repository: "multi", bytes: Array("amd".utf8))
        let layerB = try await client.pushBlob(repository: "multi", bytes: Array("arm".utf8))
        let amd = try await Self.pushImage(client, repository: "multi", tag: "amd", layers: [Descriptor(mediaType: MediaTypes.layer, digest: layerA, size: 3)])
        let arm = try await Self.pushImage(client, repository: "multi", tag: "arm", layers: [Descriptor(mediaType: MediaTypes.layer, digest: layerB, size: 3)])
        func d(_ digest: Digest, _ p: Platform) async throws -> Descriptor {
            let b = try await client.fetchManifestBytes(repository: "multi", reference: digest.description)
            return Descriptor(mediaType: MediaTypes.imageManifest, digest: digest, size: Int64(b.bytes.count), platform: p)
        }
        let index = ImageIndex(manifests: [try await d(arm, .linuxARM64), try await d(amd, .linuxAMD64)])
        try await client.pushManifest(repository: "multi", tag: "latest", bytes: CanonicalJSON.encode(index), mediaType: MediaTypes.imageIndex)
        let ref = try Reference(parsing: "\(registry.host)/multi")
        #expect(try await client.manifest(ref).0.layers[0].digest == layerA)
        #expect(try await client.manifest(ref, platform: Platform(architecture: "arm64", os: "linux")).0.layers[0].digest == layerB)
    }

    @Test func basicAuth() async throws {
        let registry = try await TestRegistry.start(auth: .basic(user: "kanga", password: "roo-secret"))
        defer { registry.stop() }
        let good = RegistryClient(host: registry.host, credentials: .init(username: "kanga", password: "roo-secret"))
        let bad = RegistryClient(host: registry.host, credentials: .init(username: "kanga", password: "wrong"))
        let anonymous = RegistryClient(host: registry.host, credentials: nil)
        defer { Task { await good.shutdown(); await bad.shutdown(); await anonymous.shutdown() } }
        let digest = try await good.pushBlob(repository: "auth/basic", bytes: Array("secret layer".utf8))
        #expect(try await good.fetchBlobRange(repository: "auth/basic", digest: digest, range: 0..<6) == Array("secret".utf8))
        do {
            _ = try await bad.blobDescriptor(repository: "auth/basic", digest: digest)
            Issue.record("wrong password accepted")
        } catch {
            #expect(error.code == .unauthorized)
            #expect(error.message.contains("401") && error.message.contains("password"), "\(error)")
        }
        do {
            _ = try await anonymous.fetchManifestBytes(repository: "auth/basic", reference: "latest")
            Issue.record("anonymous access accepted")
        } catch {
            #expect(error.code == .unauthorized)
            #expect(error.message.contains("KANGAROO_REGISTRY_USER"), "\(error)")
        }
    }

    @Test func bearerTokenAuth() async throws {
        let registry = try await TestRegistry.start(auth: .token(user: "kanga", password: "tok-secret", anonymousPull: true))
        defer { registry.stop() }
        let good = RegistryClient(host: registry.host, credentials: .init(username: "kanga", password: "tok-secret"))
        let bad = RegistryClient(host: registry.host, credentials: .init(username: "kanga", password: "nope"))
        let anonymous = RegistryClient(host: registry.host, credentials: nil)
        defer { Task { await good.shutdown(); await bad.shutdown(); await anonymous.shutdown() } }
        let dir = try TempDir()
        defer { dir.remove() }
        let (file, digest, bytes) = try Self.randomFile(dir, "blob", size: 300_000)
        try await good.pushBlob(repository: "auth/token", from: file, digest: digest, size: 300_000, chunkSize: 100_000)
        let tag = try await Self.pushImage(good, repository: "auth/token", tag: "v1",
                                           layers: [Descriptor(mediaType: MediaTypes.layer, digest: digest, size: 300_000)])
        // Anonymous pull gets a pull-only token.
        let (_, descriptor) = try await anonymous.manifest(Reference(parsing: "\(registry.host)/auth/token:v1"))
        #expect(descriptor.digest == tag)
        #expect(try await anonymous.fetchBlobRange(repository: "auth/token", digest: digest, range: 10..<20) == Array(bytes[10..<20]))
        // Anonymous push is refused; a wrong password is refused by the token server.
        await #expect(throws: OCIError.self) { _ = try await anonymous.pushBlob(repository: "auth/token", bytes: [1, 2, 3]) }
        do {
            _ = try await bad.pushBlob(repository: "auth/token", bytes: [4, 5, 6])
            Issue.record("wrong password accepted")
        } catch {
            #expect(error.code == .unauthorized)
            #expect(error.message.contains("token server"), "\(error)")
        }
    }

    @Test func deadRegistryFailsWithinTheRetryBudget() async throws {
        let registry = try await TestRegistry.start()
        let host = registry.host
        registry.stop()
        let client = RegistryClient(host: host, credentials: nil, timeout: .seconds(1), retries: 2, backoff: .milliseconds(100))
        defer { Task { await client.shutdown() } }
        let start = ContinuousClock.now
        do {
            _ = try await client.fetchManifestBytes(repository: "x", reference: "latest")
            Issue.record("dead registry answered")
        } catch {
            #expect(error.code == .network || error.code == .timeout)
            #expect(error.message.contains("127.0.0.1"), "\(error)")
        }
        #expect(ContinuousClock.now - start < .seconds(8))
    }

    @Test func hangingRegistryTimesOut() async throws {
        // A socket that listens but never answers: the kernel completes the
        // TCP handshake, the request is never served.
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        _ = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        listen(fd, 16)
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) } }
        let port = UInt16(bigEndian: addr.sin_port)
        let client = RegistryClient(host: "127.0.0.1:\(port)", credentials: nil, timeout: .milliseconds(500), retries: 1,
                                    backoff: .milliseconds(50))
        defer { Task { await client.shutdown() } }
        let start = ContinuousClock.now
        do {
            _ = try await client.fetchManifestBytes(repository: "x", reference: "latest")
            Issue.record("hanging registry answered")
        } catch {
            #expect(error.code == .timeout, "\(error)")
        }
        #expect(ContinuousClock.now - start < .seconds(5))
    }

    /// A fake registry that answers 503 to the first two GETs of each path.
    @Test func serverErrorsAreRetriedWithBackoff() async throws {
        let dir = try TempDir()
        defer { dir.remove() }
        let port = try TestRegistry.freePort()
        let script = #"""
        import http.server, json, sys
        count = {}
        class H(http.server.BaseHTTPRequestHandler):
            def log_message(self, *a): pass
            def do_GET(self):
                count[self.path] = count.get(self.path, 0) + 1
                if count[self.path] <= 2:
                    body = json.dumps({"errors": [{"code": "UNAVAILABLE", "message": "try later"}]}).encode()
                    self.send_response(503)
                else:
                    body = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "size": 2,
                                   "digest": "sha256:" + "4" * 64}, "layers": []}).encode()
                    self.send_response(200)
                    self.send_header("Content-Type", "application/vnd.oci.image.manifest.v1+json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
        http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
        """#
        try script.write(toFile: dir.file("flaky.py"), atomically: true, encoding: .utf8)
        let server = Process()
        server.executableURL = URL(fileURLWithPath: "/usr/bin/python3")
        server.arguments = [dir.file("flaky.py"), "\(port)"]
        server.standardOutput = FileHandle.nullDevice
        server.standardError = FileHandle.nullDevice
        try server.run()
        // SIGKILL: children inherit the test runner's signal mask, which may block SIGTERM.
        defer { kill(server.processIdentifier, SIGKILL); server.waitUntilExit() }
        try await TestRegistry.waitForPort(port, process: server, what: "flaky server")

        let patient = RegistryClient(host: "127.0.0.1:\(port)", credentials: nil, retries: 2, backoff: .milliseconds(100))
        defer { Task { await patient.shutdown() } }
        let start = ContinuousClock.now
        let result = try await patient.fetchManifestBytes(repository: "r", reference: "latest")
        #expect(result.mediaType == MediaTypes.imageManifest)
        // Two backoffs: 100 ms + 200 ms.
        #expect(ContinuousClock.now - start >= .milliseconds(300))

        // With fewer retries than failures the 503 surfaces with the registry's message.
        let impatient = RegistryClient(host: "127.0.0.1:\(port)", credentials: nil, retries: 0)
        defer { Task { await impatient.shutdown() } }
        do {
            _ = try await impatient.fetchManifestBytes(repository: "other", reference: "latest")
            Issue.record("503 was not reported")
        } catch {
            #expect(error.code == .unavailable)
            #expect(error.message.contains("503") && error.message.contains("UNAVAILABLE: try later"), "\(error)")
        }
    }

    @Test func skopeoLoadedLayoutPullsBack() async throws {
        let registry = try await TestRegistry.start()
        defer { registry.stop() }
        let dir = try TempDir()
        defer { dir.remove() }
        try sh("mkdir t && echo hello > t/hello && tar -C t -czf layer.tar.gz hello", cwd: dir.path)
        let layout = try OCILayout(at: dir.filePath.appending("layout"), create: true)
        let (layerDigest, layerSize) = try layout.importBlob(from: dir.filePath.appending("layer.tar.gz"), expected: nil)
        let diffHex = try sh("gzip -dc layer.tar.gz | sha256sum | cut -d' ' -f1", cwd: dir.path)
        let diffID = try Digest(algorithm: "sha256", encoded: diffHex.trimmingCharacters(in: .whitespacesAndNewlines))
        let config = ImageConfiguration(architecture: "amd64", os: "linux", config: .init(cmd: ["/hello"]),
                                        rootfs: .init(diffIDs: [diffID]))
        let configDescriptor = try layout.writeJSON(config, mediaType: MediaTypes.imageConfig)
        let manifest = ImageManifest(config: configDescriptor,
                                     layers: [Descriptor(mediaType: MediaTypes.layerGzip, digest: layerDigest, size: layerSize)])
        let manifestDescriptor = try layout.writeJSON(manifest, mediaType: MediaTypes.imageManifest)
        try layout.setTag("v1", to: manifestDescriptor)
        try run("/usr/bin/skopeo", ["copy", "--quiet", "oci:\(dir.file("layout")):v1",
                                    "docker://\(registry.host)/skopeo/img:v1", "--dest-tls-verify=false"])

        let client = RegistryClient(host: registry.host, credentials: nil)
        defer { Task { await client.shutdown() } }
        let (pulled, _) = try await client.manifest(Reference(parsing: "\(registry.host)/skopeo/img:v1"))
        #expect(pulled.layers.map(\.digest) == [layerDigest])
        try await client.fetchBlob(repository: "skopeo/img", digest: layerDigest, to: dir.filePath.appending("pulled.tar.gz"))
        let reader = try LayerReader(path: dir.filePath.appending("pulled.tar.gz"))
        #expect(try reader.next()?.path == "hello")
        let configBytes = try await client.fetchBlobRange(repository: "skopeo/img", digest: pulled.config.digest,
                                                          range: 0..<Int64(pulled.config.size))
        let pulledConfig = try CanonicalJSON.decode(ImageConfiguration.self, from: configBytes, what: "config")
        #expect(pulledConfig.config?.cmd == ["/hello"])
    }
}

final class Counter: @unchecked Sendable {
    private let lock = NSLock()
    private var count = 0
    func increment() { lock.lock(); count += 1; lock.unlock() }
    var value: Int { lock.lock(); defer { lock.unlock() }; return count }
}
