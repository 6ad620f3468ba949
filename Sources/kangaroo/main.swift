// `kangaroo image mount --daemon` forks here, before the process has a
// second thread: the child becomes the mount daemon without a second
// program start (exec, dynamic loading, runtime set-up), which is most of
// a detached mount's latency on a cold machine. The parent goes on to
// parse its arguments and waits for the child's mount (Mount.spawnDaemon).
DaemonFork.forkIfRequested()
DaemonFork.closeDescriptorsForNode()
await DaemonFork.runCommand()
