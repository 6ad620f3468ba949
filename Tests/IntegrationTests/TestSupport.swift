import Foundation
import KangarooTestSupport
import Testing

/// `kangaroo` with a private store.
func kangaroo(_ args: [String], store: String, env: [String: String] = [:], check: Bool = true,
              sourceLocation: SourceLocation = #_sourceLocation) throws -> CommandResult {
    try run(TestEnv.kangaroo, args + ["--store", store], env: env, check: check, sourceLocation: sourceLocation)
}

/// Flips the lowest bit of the byte at `offset` of a file.
func flipByte(_ path: String, at offset: UInt64) throws {
    let h = try FileHandle(forUpdating: URL(fileURLWithPath: path))
    defer { try? h.close() }
    try h.seek(toOffset: offset)
    let b = try #require(try h.read(upToCount: 1)).first!
    try h.seek(toOffset: offset)
    try h.write(contentsOf: Data([b ^ 0x01]))
}
