import Dispatch

/// A task executor on a concurrent dispatch queue: ttrpc requests are
/// handled here, not on the cooperative pool, so a caller that blocks the
/// pool's few threads (synchronous code elsewhere in the process) cannot
/// stall containerd's calls. Default actors a request enters (the Task
/// service) run here too (SE-0417).
public final class DispatchTaskExecutor: TaskExecutor, @unchecked Sendable {
    let queue: DispatchQueue

    public init(label: String) {
        queue = DispatchQueue(label: label, attributes: .concurrent)
    }

    public func enqueue(_ job: consuming ExecutorJob) {
        let job = UnownedJob(job)
        queue.async { job.runSynchronously(on: self.asUnownedTaskExecutor()) }
    }
}
