-- Most deploys name no commit (an image alone, as Pelorus and most CD tools
-- report them), and no lookup by commit asks for those: deploys_by_commit
-- keeps only the deploys that name one. Every statement that reads it says
-- commit_sha <> '' in so many words, which is how the planner knows the
-- index holds every row the statement can match. A deploy without a commit
-- then writes one index fewer.
DROP INDEX deploys_by_commit;
CREATE INDEX deploys_by_commit ON deploys (app, commit_sha, time) WHERE commit_sha <> '';
