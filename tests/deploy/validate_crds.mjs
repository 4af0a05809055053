// Validates custom resources against the schemas their operators publish (via @kubernetes-models).
// Usage: node validate_crds.mjs <node_modules dir>  < JSON array of resources
// Prints a JSON array with, for each resource, null (valid) or the list of errors.
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { pathToFileURL } from "node:url";

const modules = process.argv[2];
const packages = {
  "monitoring.coreos.com": "@kubernetes-models/prometheus-operator",
  "kafka.strimzi.io": "@kubernetes-models/strimzi-kafka-operator",
  "gateway.networking.k8s.io": "@kubernetes-models/gateway-api",
};

const resources = JSON.parse(readFileSync(0, "utf8"));
const results = [];
for (const resource of resources) {
  const [group, version] = resource.apiVersion.split("/");
  const pkg = packages[group];
  if (!pkg) {
    results.push([`no schema package for API group ${group}`]);
    continue;
  }
  const file = join(modules, pkg, group, version, `${resource.kind}.js`);
  let Model;
  try {
    Model = (await import(pathToFileURL(file).href))[resource.kind];
  } catch (error) {
    results.push([`no schema for ${resource.apiVersion} ${resource.kind}: ${error.message}`]);
    continue;
  }
  try {
    new Model(resource).validate();
    results.push(null);
  } catch (error) {
    results.push([error.message]);
  }
}
process.stdout.write(JSON.stringify(results));
