-- A deploy that names only its image digest ships the commits linked to
-- that digest (a registry package, a build pipeline, a CDEvents
-- artifact.packaged): finding them by (app, image_sha) must not scan every
-- link of the application on the acknowledgement path.
CREATE INDEX links_by_image ON links (app, image_sha);
