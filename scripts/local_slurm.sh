#!/usr/bin/env bash
# local_slurm.sh - run a real single-node SLURM cluster (with accounting) on localhost, for tests and CI.
#
# Usage: bash scripts/local_slurm.sh {install|start|stop|status|env}
#   install  apt-get install slurm-wlm slurmdbd munge mariadb-server if any is missing
#   start    start munged, MariaDB, slurmdbd, slurmctld, slurmd (idempotent), register accounting, wait
#            until the node is idle; prints `export SLURM_CONF=...` on stdout (also in <state>/env)
#   stop     stop every daemon started here (idempotent); keeps state and logs
#   status   say which daemons run and show sinfo; exit 0 when all run, 1 otherwise
#   env      print the `export SLURM_CONF=...` line
#
# Everything (configs, logs, pid files, spool dirs, the MariaDB datadir, the munge key and socket, the fake GPU
# device files) lives in the state dir ${REG2RG_SLURM_DIR:-/tmp/reg2rg-slurm}; of /etc/slurm and /etc/munge only
# /etc/slurm/slurm.conf is touched, as a link to <state>/etc/slurm.conf while the cluster runs (link_system_conf).
# Daemons are started directly (no systemd). Must run as root (SlurmUser=root).
# Optional overrides: REG2RG_SLURM_CPUS (default nproc, OMP_NUM_THREADS ignored), REG2RG_SLURM_MEM_MB (default 80% of RAM),
# REG2RG_SLURM_GPUS (default 2 fake GPUs), REG2RG_SLURM_DB_PORT (default 3307), REG2RG_SLURM_PORT_BASE
# (default 6817: slurmctld, +1 slurmd, +2 slurmdbd).
# Progress goes to stderr, so `eval "$(bash scripts/local_slurm.sh start)"` works.
set -euo pipefail

STATE=$(realpath -m "${REG2RG_SLURM_DIR:-/tmp/reg2rg-slurm}")
CLUSTER=reg2rg-local
ACCOUNT=reg2rg-test
NODE=$(hostname -s)
# nproc without OMP_NUM_THREADS / OMP_THREAD_LIMIT, which GNU nproc obeys: started from a shell with
# OMP_NUM_THREADS=1 (a common test setting) the node would have 1 CPU and every 2-thread job would pend forever
# (Reason=PartitionConfig).
CPUS=${REG2RG_SLURM_CPUS:-$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc)}
GPUS=${REG2RG_SLURM_GPUS:-2}
DB_PORT=${REG2RG_SLURM_DB_PORT:-3307} # not 3306, so a distro MariaDB/MySQL on the default port does not clash
PORT_BASE=${REG2RG_SLURM_PORT_BASE:-6817}
CTLD_PORT=$PORT_BASE
SLURMD_PORT=$((PORT_BASE + 1))
DBD_PORT=$((PORT_BASE + 2))

ETC=$STATE/etc
LOG=$STATE/log
RUN=$STATE/run
MUNGE_DIR=$STATE/munge
DB_DIR=$STATE/mysql
SLURM_CONF_PATH=$ETC/slurm.conf
MY_CNF=$ETC/my.cnf
MUNGE_SOCKET=$MUNGE_DIR/munge.socket.2
# Daemons, clients and sacctmgr find slurmdbd.conf and gres.conf next to $SLURM_CONF (no cgroup.conf: no cgroup
# plugin is used).
export SLURM_CONF=$SLURM_CONF_PATH

PACKAGES=(slurm-wlm slurmdbd munge mariadb-server)
DAEMONS=(munged mariadbd slurmdbd slurmctld slurmd) # start order; stop runs it backwards

log() { printf '[local_slurm] %s\n' "$*" >&2; }
die() { printf '[local_slurm] ERROR: %s\n' "$*" >&2; exit 1; }

logfile_of() { echo "$LOG/$1.log"; }
pidfile_of() {
    case $1 in
        munged) echo "$MUNGE_DIR/munged.pid" ;; # munged runs as the munge user and writes its own pid file
        *) echo "$RUN/$1.pid" ;;
    esac
}

# Print the pid of daemon $1 if the process named in its pid file is alive and really is that daemon
# (a stale pid file after a crash may name a pid reused by something else).
pid_of() {
    local name=$1 pidfile pid
    pidfile=$(pidfile_of "$name")
    [[ -s $pidfile ]] || return 1
    pid=$(tr -dc '0-9' <"$pidfile")
    alive "$pid" || return 1
    [[ $(cat "/proc/$pid/comm" 2>/dev/null) == "$name" ]] || return 1
    echo "$pid"
}

# A process that exists and is not a zombie (a daemon killed with -9 lingers as one until init reaps it).
alive() {
    [[ -n $1 ]] && kill -0 "$1" 2>/dev/null || return 1
    ! grep -q '^State:[[:space:]]*Z' "/proc/$1/status" 2>/dev/null
}

# Fail with the daemon's log tail: the message names the file to read.
fail_start() {
    local name=$1 logf
    logf=$(logfile_of "$name")
    printf '[local_slurm] ERROR: %s failed to start; read %s. Last lines:\n' "$name" "$logf" >&2
    tail -n 25 "$logf" >&2 2>/dev/null || true
    exit 1
}

# wait_until SECONDS CMD...: poll CMD (quietly) until it succeeds; return 1 on timeout.
wait_until() {
    local deadline=$((SECONDS + $1))
    shift
    until "$@" >/dev/null 2>&1; do
        ((SECONDS < deadline)) || return 1
        sleep 0.2
    done
}

# wait_daemon NAME SECONDS CMD...: like wait_until, but give up early (fail_start) when daemon NAME has died,
# e.g. on a port already in use, instead of polling until the timeout. $BG_PID, if set, is the daemon's pid
# before it writes its pid file; otherwise the pid file gets a few seconds' grace to appear.
wait_daemon() {
    local name=$1 deadline=$((SECONDS + $2)) grace=$((SECONDS + 3))
    shift 2
    until "$@" >/dev/null 2>&1; do
        ((SECONDS < deadline)) || fail_start "$name"
        if ! pid_of "$name" >/dev/null && ! alive "${BG_PID:-}" && ((SECONDS >= grace)); then
            log "$name exited"
            fail_start "$name"
        fi
        sleep 0.2
    done
}

require_root() { [[ $EUID -eq 0 ]] || die "must run as root (the cluster uses SlurmUser=root)"; }

pkg_installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }

missing_packages() {
    local p
    for p in "${PACKAGES[@]}"; do pkg_installed "$p" || echo "$p"; done
}

cmd_install() {
    local missing
    mapfile -t missing < <(missing_packages)
    if ((${#missing[@]} == 0)); then
        log "packages already installed: ${PACKAGES[*]}"
        return 0
    fi
    require_root
    command -v apt-get >/dev/null || die "apt-get not found; install ${missing[*]} by hand"
    log "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq || die "apt-get update failed (no network to the Debian mirror?)"
    apt-get install -y -q "${PACKAGES[@]}" >&2 || die "apt-get install ${PACKAGES[*]} failed"
    mapfile -t missing < <(missing_packages)
    ((${#missing[@]} == 0)) || die "still missing after apt-get: ${missing[*]}"
}

require_binaries() {
    local b
    for b in munged munge unmunge mariadbd mariadb mariadb-admin mariadb-install-db slurmdbd slurmctld slurmd \
        sacctmgr sinfo sacct scontrol runuser; do
        command -v "$b" >/dev/null || die "$b not found; run: bash $0 install"
    done
}

# ---------------------------------------------------------------------------------------------- configuration

mem_mb() {
    if [[ -n ${REG2RG_SLURM_MEM_MB:-} ]]; then
        echo "$REG2RG_SLURM_MEM_MB"
    else
        # 80% of physical memory: slurmd marks the node invalid if RealMemory exceeds what it detects.
        awk '/^MemTotal:/ { printf "%d\n", $2 / 1024 * 0.8 }' /proc/meminfo
    fi
}

# Write $2 (content on stdin) to file $1 only when it changed; remember that so `start` can warn about
# daemons that still run with an older config.
CONFIG_CHANGED=0
write_file() {
    local dest=$1 mode=$2 tmp
    tmp=$(mktemp "$dest.XXXXXX")
    cat >"$tmp"
    chmod "$mode" "$tmp"
    if [[ -f $dest ]] && cmp -s "$tmp" "$dest"; then
        rm -f "$tmp"
    else
        mv -f "$tmp" "$dest"
        CONFIG_CHANGED=1
    fi
}

# Fake GPUs for gres.conf File=. slurmd only sets CUDA_VISIBLE_DEVICES / GPU_DEVICE_ORDINAL for File= entries
# that are character devices, so each is made a clone of /dev/null (char 1:3: harmless to open or write).
# Where mknod is not allowed, plain files still give scheduling and gres/gpu accounting (slurmd then logs
# "not a valid character or block device" and jobs get no CUDA_VISIBLE_DEVICES).
make_fake_gpus() {
    local i f
    for ((i = 0; i < GPUS; i++)); do
        f=$STATE/dev/gpu$i
        [[ -c $f ]] && continue
        rm -f "$f"
        mknod -m 666 "$f" c 1 3 2>/dev/null || : >"$f"
    done
}

make_layout() {
    mkdir -p "$ETC" "$LOG" "$RUN" "$DB_DIR" "$STATE/spool/slurmctld" "$STATE/spool/slurmd" "$STATE/dev"
    # munged refuses group/world-writable dirs on the way to its key, socket and log; 755 root is fine.
    chmod 755 "$STATE" "$ETC" "$LOG" "$RUN"
    mkdir -p "$MUNGE_DIR"
    chown munge:munge "$MUNGE_DIR"
    chmod 755 "$MUNGE_DIR" # others must reach the socket (755, not 700); the key itself is 600
    make_fake_gpus
    # The MariaDB password for slurmdbd, generated once and kept across restarts.
    if [[ ! -s $ETC/db.pass ]]; then
        (umask 077 && head -c 24 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' >"$ETC/db.pass")
    fi
    chmod 600 "$ETC/db.pass"
}

write_configs() {
    local mem gres_node="" dbpass
    mem=$(mem_mb)
    dbpass=$(cat "$ETC/db.pass")
    ((GPUS > 0)) && gres_node="Gres=gpu:$GPUS"

    write_file "$SLURM_CONF_PATH" 644 <<EOF
# Generated by scripts/local_slurm.sh - edits are overwritten on the next start.
ClusterName=$CLUSTER
# host(addr): the name must be \`hostname -s\` (slurmctld checks it), the address avoids any DNS lookup.
SlurmctldHost=$NODE(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
# root everywhere: the simplest setup for a throwaway test cluster in a container.
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# Our own munged socket, so a system munged (or its absence) does not matter. AuthInfo is what the daemons
# verify with; Slurm 22.05 *creates* credentials (clients, sacctmgr, slurmctld -> slurmdbd) with the socket
# named in AccountingStoragePass (documented use: "an alternate MUNGE daemon"), so both must name it.
AuthInfo=socket=$MUNGE_SOCKET
AccountingStoragePass=$MUNGE_SOCKET
StateSaveLocation=$STATE/spool/slurmctld
SlurmdSpoolDir=$STATE/spool/slurmd
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd.pid
SlurmctldLogFile=$LOG/slurmctld.log
SlurmdLogFile=$LOG/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
# No mail in CI; the default /bin/mail is usually absent.
MailProg=/bin/true
MpiDefault=none
# No cgroups in this container: track job processes through /proc, no task binding/confinement.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=30
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=$DBD_PORT
# Record GPUs as a TRES, so sacct -o AllocTRES shows gres/gpu=N.
AccountingStorageTRES=gres/gpu
# 1, not 2: a node DOWN for not responding (slurmd restarted or late) returns by itself, but one set DOWN by
# hand stays DOWN until \`scontrol update nodename=$NODE state=resume\`. With 2 the node came back to IDLE
# within milliseconds when the killed jobs' epilog answered, which made down/resume tests racy.
# \`start\` resumes a node left down or drained anyway.
ReturnToService=1
# Jobs on a node that goes DOWN end NODE_FAIL instead of being requeued (the Slurm default): deterministic
# for tests. sbatch --requeue still opts in per job.
JobRequeue=0
SlurmctldTimeout=30
# Short, so a dead slurmd is noticed quickly in tests.
SlurmdTimeout=30
MessageTimeout=10
# SIGTERM -> SIGKILL grace for cancelled / timed-out jobs; 0 overtime so TIMEOUT happens right at the limit.
KillWait=5
OverTimeLimit=0
# Keep finished jobs visible in squeue/scontrol for 5 minutes.
MinJobAge=300
InactiveLimit=0
Waittime=0
SchedulerType=sched/backfill
# cons_tres: GPUs are schedulable TRES; CR_CPU_Memory allocates single CPUs (not whole cores) and memory, so
# two 1-CPU jobs share the node at once whatever the thread layout of the machine is.
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
DefMemPerCPU=1000
GresTypes=gpu
NodeName=$NODE NodeAddr=127.0.0.1 NodeHostname=$NODE CPUs=$CPUS RealMemory=$mem $gres_node State=UNKNOWN
# Two partitions over the same node; OverSubscribe stays NO: jobs share the node by CPU/memory/GPU, not by
# oversubscribing CPUs.
PartitionName=cpu Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes=$NODE MaxTime=INFINITE State=UP
EOF

    if ((GPUS > 0)); then
        local files=$STATE/dev/gpu0
        ((GPUS > 1)) && files="$STATE/dev/gpu[0-$((GPUS - 1))]"
        write_file "$ETC/gres.conf" 644 <<EOF
# Generated by scripts/local_slurm.sh. No NVML detection: the "GPUs" are /dev/null clones (see make_fake_gpus).
AutoDetect=off
NodeName=$NODE Name=gpu File=$files
EOF
    else
        write_file "$ETC/gres.conf" 644 </dev/null
    fi

    # slurmdbd insists on mode 600 and ownership by SlurmUser (root here): it holds the DB password.
    write_file "$ETC/slurmdbd.conf" 600 <<EOF
# Generated by scripts/local_slurm.sh.
AuthType=auth/munge
AuthInfo=socket=$MUNGE_SOCKET
# DbdHost must be \`hostname -s\` (slurmdbd checks it); DbdAddr is where clients reach it.
DbdHost=$NODE
DbdAddr=127.0.0.1
DbdPort=$DBD_PORT
SlurmUser=root
LogFile=$LOG/slurmdbd.log
PidFile=$RUN/slurmdbd.pid
DebugLevel=info
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=$dbpass
StorageLoc=slurm_acct_db
EOF
    chown root:root "$ETC/slurmdbd.conf"

    write_file "$MY_CNF" 644 <<EOF
# Generated by scripts/local_slurm.sh: a private MariaDB for slurmdbd.
[mysqld]
user=root
datadir=$DB_DIR
socket=$RUN/mysqld.sock
pid-file=$RUN/mariadbd.pid
log-error=$LOG/mariadbd.log
# Loopback only (plus the unix socket for admin): never reachable from outside.
bind-address=127.0.0.1
port=$DB_PORT
skip-name-resolve
# Small footprint; the lock timeout is what the Slurm docs recommend for slurmdbd. slurmdbd logs a harmless
# "Database settings not recommended values: innodb_buffer_pool_size" (it wants GBs) - fine for tests.
innodb_buffer_pool_size=64M
innodb_log_file_size=64M
innodb_lock_wait_timeout=900
[client]
socket=$RUN/mysqld.sock
port=$DB_PORT
EOF
}

# ---------------------------------------------------------------------------------------------- daemons

start_munged() {
    if pid_of munged >/dev/null; then return 0; fi
    if [[ ! -s $MUNGE_DIR/munge.key ]]; then
        log "generating munge key $MUNGE_DIR/munge.key"
        (umask 077 && head -c 1024 /dev/urandom >"$MUNGE_DIR/munge.key")
    fi
    # munged checks that it owns its key, seed, pid file and log, and that the key is not readable by others.
    chown munge:munge "$MUNGE_DIR/munge.key"
    chmod 600 "$MUNGE_DIR/munge.key"
    touch "$LOG/munged.log"
    chown munge:munge "$LOG/munged.log"
    chmod 640 "$LOG/munged.log"
    rm -f "$MUNGE_DIR/munged.pid" "$MUNGE_SOCKET" "$MUNGE_SOCKET.lock" # stale after a crash
    log "starting munged"
    runuser -u munge -- munged --socket="$MUNGE_SOCKET" --key-file="$MUNGE_DIR/munge.key" \
        --pid-file="$MUNGE_DIR/munged.pid" --log-file="$LOG/munged.log" --seed-file="$MUNGE_DIR/munged.seed" \
        </dev/null >>"$LOG/munged.log" 2>&1 || fail_start munged
    wait_daemon munged 10 munge_works
}

munge_works() { munge -n -S "$MUNGE_SOCKET" | unmunge -S "$MUNGE_SOCKET"; }

mariadb_sql() { mariadb --defaults-file="$MY_CNF" -uroot; } # SQL on stdin

start_mariadbd() {
    if ! pid_of mariadbd >/dev/null; then
        rm -f "$RUN/mariadbd.pid" "$RUN/mysqld.sock"
        if [[ ! -d $DB_DIR/mysql ]]; then
            log "initialising MariaDB datadir $DB_DIR"
            # root logs in through the unix socket as OS user root: no root password to keep.
            mariadb-install-db --defaults-file="$MY_CNF" --auth-root-authentication-method=socket \
                --skip-test-db >>"$LOG/mariadbd.log" 2>&1 || fail_start mariadbd
        fi
        log "starting MariaDB on 127.0.0.1:$DB_PORT"
        # mariadbd does not daemonize itself: detach it into its own session.
        setsid mariadbd --defaults-file="$MY_CNF" </dev/null >>"$LOG/mariadbd.log" 2>&1 &
        BG_PID=$! wait_daemon mariadbd 60 mariadb-admin --defaults-file="$MY_CNF" ping
        wait_daemon mariadbd 10 pid_of mariadbd
    fi
    # Idempotent: database and user for slurmdbd (on loopback TCP, and on the socket should it be used).
    local pass
    pass=$(cat "$ETC/db.pass")
    mariadb_sql <<EOF || fail_start mariadbd
CREATE DATABASE IF NOT EXISTS slurm_acct_db;
CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '$pass';
CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$pass';
ALTER USER 'slurm'@'127.0.0.1' IDENTIFIED BY '$pass';
ALTER USER 'slurm'@'localhost' IDENTIFIED BY '$pass';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
EOF
}

start_slurmdbd() {
    if ! pid_of slurmdbd >/dev/null; then
        rm -f "$RUN/slurmdbd.pid"
        log "starting slurmdbd"
        # slurmdbd reads slurmdbd.conf from the directory of $SLURM_CONF (exported above); it daemonizes.
        slurmdbd </dev/null >>"$LOG/slurmdbd.log" 2>&1 || fail_start slurmdbd
    fi
    # The first start creates the accounting tables, which takes a few seconds.
    wait_daemon slurmdbd 60 sacctmgr -n -P show cluster format=cluster
}

# Accounting objects, before slurmctld starts so it registers with a known cluster and loads the associations.
ensure_accounting() {
    if ! sacctmgr -n -P show cluster format=cluster | grep -qx "$CLUSTER"; then
        log "sacctmgr: adding cluster $CLUSTER"
        sacctmgr -i add cluster "$CLUSTER" >&2
    fi
    if ! sacctmgr -n -P show account "$ACCOUNT" format=account | grep -qx "$ACCOUNT"; then
        log "sacctmgr: adding account $ACCOUNT"
        sacctmgr -i add account "$ACCOUNT" cluster="$CLUSTER" description="reg2rg tests" organization=reg2rg >&2
    fi
    if ! sacctmgr -n -P show assoc where cluster="$CLUSTER" account="$ACCOUNT" user=root format=user |
        grep -qx root; then
        log "sacctmgr: adding user root to $ACCOUNT"
        sacctmgr -i add user root account="$ACCOUNT" cluster="$CLUSTER" >&2
    fi
    # Jobs submitted without -A are charged to the test account too (root's default would be "root").
    if [[ $(sacctmgr -n -P show user root format=defaultaccount) != "$ACCOUNT" ]]; then
        sacctmgr -i modify user where name=root set defaultaccount="$ACCOUNT" >&2
    fi
}

# Start slurmctld or slurmd ($1) unless it runs, then wait up to $2 s until the check ("$@" after) passes.
# No -c for slurmctld: the saved job and node state survives a stop/start.
start_slurm_daemon() {
    local name=$1 timeout=$2
    shift 2
    if ! pid_of "$name" >/dev/null; then
        rm -f "$RUN/$name.pid"
        log "starting $name"
        "$name" -f "$SLURM_CONF_PATH" </dev/null >>"$LOG/$name.log" 2>&1 || fail_start "$name"
    fi
    wait_daemon "$name" "$timeout" "$@"
}
start_slurmctld() { start_slurm_daemon slurmctld 30 scontrol ping; }
start_slurmd() { start_slurm_daemon slurmd 10 pid_of slurmd; }

# Node state as sinfo prints it (e.g. idle, mixed, down*, drained); "*" means not responding (yet).
node_state() { sinfo -h -N -n "$NODE" -o %T | awk 'NR == 1'; }

wait_node_ready() {
    local deadline=$((SECONDS + 40)) state resumed=0
    while ((SECONDS < deadline)); do
        state=$(node_state 2>/dev/null || true)
        case $state in
            idle | mixed | allocated | completing | planned) return 0 ;;
            *'*' | unknown* | "") ;; # slurmd has not registered yet
            down* | drain* | fail*)
                # Left down/drained by a test or a crash: put it back into service, once.
                if ((!resumed)); then
                    log "node $NODE is $state; resuming it"
                    scontrol update nodename="$NODE" state=resume >&2 || true
                    resumed=1
                fi
                ;;
        esac
        sleep 0.3
    done
    log "node $NODE did not become idle (state: ${state:-?}); reason: $(sinfo -h -n "$NODE" -o %E 2>/dev/null)"
    fail_start slurmd
}

stop_daemon() {
    local name=$1 pid pidfile i
    pidfile=$(pidfile_of "$name")
    if ! pid=$(pid_of "$name"); then
        rm -f "$pidfile"
        return 0
    fi
    log "stopping $name (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 150; i++)); do # up to 30 s (MariaDB flushes InnoDB)
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.2
    done
    if kill -0 "$pid" 2>/dev/null; then
        log "$name did not stop on SIGTERM; killing it"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$pidfile"
}

# ---------------------------------------------------------------------------------------------- commands

env_line() { echo "export SLURM_CONF=$SLURM_CONF_PATH"; }

all_running() {
    local d
    for d in "${DAEMONS[@]}"; do pid_of "$d" >/dev/null || return 1; done
}

# The default config path /etc/slurm/slurm.conf as a link to ours. Clients inside jobs need it: Snakemake's
# jobstep executor drops every SLURM_* variable (SLURM_CONF too) before its nested srun, which then finds no
# config (a real cluster node has /etc/slurm/slurm.conf or runs configless). A config that is not ours is refused.
SYSTEM_CONF=/etc/slurm/slurm.conf
link_system_conf() {
    if [[ -e $SYSTEM_CONF || -L $SYSTEM_CONF ]] && [[ $(readlink "$SYSTEM_CONF") != "$SLURM_CONF_PATH" ]]; then
        die "$SYSTEM_CONF exists and is not this cluster's: this machine has a SLURM of its own (not started)"
    fi
    mkdir -p "$(dirname "$SYSTEM_CONF")"
    ln -sfn "$SLURM_CONF_PATH" "$SYSTEM_CONF"
}
unlink_system_conf() {
    if [[ -L $SYSTEM_CONF && $(readlink "$SYSTEM_CONF") == "$SLURM_CONF_PATH" ]]; then rm -f "$SYSTEM_CONF"; fi
}

cmd_start() {
    require_root
    require_binaries
    local was_running=0
    all_running && was_running=1
    make_layout
    write_configs
    link_system_conf
    if ((was_running && CONFIG_CHANGED)); then
        log "WARNING: the config changed while the cluster runs; run 'stop' then 'start' to apply it"
    fi
    start_munged
    start_mariadbd
    start_slurmdbd
    ensure_accounting
    start_slurmctld
    start_slurmd
    wait_node_ready
    wait_daemon slurmdbd 20 sacct -n -X
    env_line >"$STATE/env"
    log "cluster $CLUSTER up (node $NODE: $(node_state)); state dir $STATE"
    env_line
}

cmd_stop() {
    local i running
    # Running jobs are not killed: their slurmstepd processes outlive slurmd, and the next start's slurmd
    # takes them up again (normal Slurm behaviour). Say so, since a CI teardown may want scancel first.
    if pid_of slurmctld >/dev/null && running=$(squeue -h -t running,completing -o %i 2>/dev/null | wc -l) &&
        ((running > 0)); then
        log "note: $running job(s) still running; they keep running (scancel them first for a clean stop)"
    fi
    for ((i = ${#DAEMONS[@]} - 1; i >= 0; i--)); do stop_daemon "${DAEMONS[i]}"; done
    unlink_system_conf
    log "stopped; state and logs kept in $STATE"
}

cmd_status() {
    local d pid rc=0
    for d in "${DAEMONS[@]}"; do
        if pid=$(pid_of "$d"); then
            printf '%-10s running (pid %s)\n' "$d" "$pid"
        else
            printf '%-10s stopped\n' "$d"
            rc=1
        fi
    done
    if pid_of slurmctld >/dev/null; then
        sinfo || rc=1
    fi
    return "$rc"
}

case ${1:-} in
    install) cmd_install ;;
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    env) env_line ;;
    *)
        echo "usage: $0 {install|start|stop|status|env}   (state dir: $STATE)" >&2
        exit 2
        ;;
esac
