// The producer's public types, as the package exports them. These assertions act in `npm run typecheck`
// (tsc covers test/): a TypeScript caller's typo must not compile, so a type that loosens again (back to
// `unknown`) fails the typecheck here. At run time the file only checks what the types say about values.
import { describe, expectTypeOf, it } from 'vitest';
import type {
  CreateWorkspaceInput,
  EnqueuedCreate,
  EnqueuedStart,
  StartWorkspaceInput,
  WorkspaceJobsProducer,
} from '../../src/index.js';

const id = '0b8f6a2e-6c1d-4f4a-9d3e-2a7c5e1b9f00';

describe('the producer API types', () => {
  it("refuse a start whose fields are misspelt or missing ({ chatID: 'oops' })", () => {
    expectTypeOf<WorkspaceJobsProducer['startWorkspace']>().toBeCallableWith({ chatId: id, ownerId: id });
    expectTypeOf<WorkspaceJobsProducer['startWorkspace']>().toBeCallableWith({
      chatId: id,
      ownerId: id,
      workspaceId: id,
      parameters: { region: 'eu' },
      requestId: 'r-1',
    });
    // The call exactly, as written (never run).
    expectTypeOf((producer: WorkspaceJobsProducer) =>
      // @ts-expect-error `chatID` is not a field, and chatId and ownerId are missing
      producer.startWorkspace({ chatID: 'oops' }),
    ).toBeFunction();
    // @ts-expect-error ownerId is required
    expectTypeOf<WorkspaceJobsProducer['startWorkspace']>().toBeCallableWith({ chatId: id });
    expectTypeOf<{
      chatId: string;
      ownerId: string;
      parameters: { cpu: number };
    }>().not.toExtend<StartWorkspaceInput>();
  });

  it('refuse a create without its template, or with a start-only field', () => {
    expectTypeOf<WorkspaceJobsProducer['createWorkspace']>().toBeCallableWith({
      chatId: id,
      ownerId: id,
      templateId: id,
      name: 'dev',
    });
    // @ts-expect-error templateId is required
    expectTypeOf<WorkspaceJobsProducer['createWorkspace']>().toBeCallableWith({ chatId: id, ownerId: id });
    // A call as the chat backend writes it (never run): an object literal with a field of another job kind.
    expectTypeOf((producer: WorkspaceJobsProducer) =>
      producer.createWorkspace({
        chatId: id,
        ownerId: id,
        templateId: id,
        // @ts-expect-error a create has no workspaceId (it makes the workspace)
        workspaceId: id,
      }),
    ).toBeFunction();
    expectTypeOf<CreateWorkspaceInput['name']>().toEqualTypeOf<string | undefined>();
  });

  it('give `differs` only on a deduplicated enqueue, naming fields of that job kind', () => {
    expectTypeOf<
      Awaited<ReturnType<WorkspaceJobsProducer['startWorkspace']>>
    >().toEqualTypeOf<EnqueuedStart>();
    expectTypeOf<Extract<EnqueuedStart, { deduplicated: true }>['differs']>().toEqualTypeOf<
      ('chatId' | 'ownerId' | 'parameters')[]
    >();
    expectTypeOf<Extract<EnqueuedCreate, { deduplicated: true }>['differs']>().toEqualTypeOf<
      ('ownerId' | 'templateId' | 'name' | 'parameters')[]
    >();
    expectTypeOf<Extract<EnqueuedStart, { deduplicated: false }>>().not.toHaveProperty('differs');
  });
});
