# The "Workspaces" block names a site hpc1: configure one whose agent runs elsewhere (none here).
mkdir -p "$LWFM_BUS_HOME"
cat > "$LWFM_BUS_HOME/sites.toml" <<'TOML'
[sites.hpc1]
adapter = "slurm"
served_by_up = false
TOML
