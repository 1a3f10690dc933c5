# Shared by the scripts in this folder (sourced, not run).

# cfysnap_cache: the cache for downloaded servers and jars, Maven's repository and data folders:
# $CFYSNAP_CACHE, else /var/cache/cfysnap as root (servers run as `nobody`, who cannot enter
# /root), else ~/.cache/cfysnap.
cfysnap_cache() {
    if [[ -n "${CFYSNAP_CACHE:-}" ]]; then
        echo "$CFYSNAP_CACHE"
    elif [[ $EUID -eq 0 ]]; then
        echo /var/cache/cfysnap
    else
        echo "$HOME/.cache/cfysnap"
    fi
}

# maven_in_cache CACHE: Maven keeps its local repository in the cache, not in ~/.m2 (one copy of
# every jar fetched for the project).
maven_in_cache() {
    export MAVEN_OPTS="${MAVEN_OPTS:-} -Dmaven.repo.local=$1/m2"
}
