// Validates the custom resources among the Kubernetes objects on stdin (a JSON array) against
// the schemas of their CRDs, as packaged by kubernetes-models. Prints one line per object it
// has a schema for; exits 1 if any is invalid. Kinds without a package here are left alone.
import { readFileSync } from "node:fs";

const groups = {
  "cert-manager.io/v1": await import("@kubernetes-models/cert-manager/cert-manager.io/v1"),
  "security.istio.io/v1": await import("@kubernetes-models/istio/security.istio.io/v1"),
};
let invalid = 0;
for (const object of JSON.parse(readFileSync(0, "utf8"))) {
  const Model = groups[object.apiVersion]?.[object.kind];
  if (!Model) continue;
  const name = `${object.apiVersion} ${object.kind} ${object.metadata.namespace}/${object.metadata.name}`;
  try {
    new Model(object).validate();
    console.log(`valid ${name}`);
  } catch (error) {
    invalid += 1;
    console.log(`INVALID ${name}: ${error.message}`);
  }
}
process.exit(invalid ? 1 : 0);
