import Foundation
import KangarooTestSupport
import Testing

/// `kangaroo` with a private store.
func kangaroo(_ args: [String], store: String, env: [String: String] = [:], check: Bool = true,
              sourceLocation: SourceLocation = #_sourceLocation) throws -> CommandResult {
    try run(TestEnv.kangaroo, args + ["--store", store], env: env, check: check, sourceLocation: sourceLocation)
}

