# The files the "Data" blocks name: a mesh, an input file and a query file.
mkdir -p out
echo "a mesh" > out/mesh.vtk
echo "an input" > in.dat
cp "$README_FIXTURES/q.json" q.json
