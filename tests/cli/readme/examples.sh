# The "Pipelines" block runs from a clone of the repository: its examples/, copied here.
cp -R "$README_REPO/examples" examples
